"""AsyncEngine: the synchronous LLMEngine stepped by one background thread of this process.

A full waiting queue (EngineConfig.max_queue_len, checked by LLMEngine.add_request) raises
QueueFullError from add_request. The engine is not thread-safe, so every engine call (add, abort, step, stats) runs on the loop thread:
the asyncio side (`engine.engine_client.EngineClient`) posts commands to it and receives outputs through
`loop.call_soon_threadsafe`. `engine.engine_process.ProcessAsyncEngine` runs the engine in its own process instead.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from engine.config import EngineConfig
from engine.engine_client import EngineClient, EngineDeadError, _settle
from engine.llm_engine import LLMEngine, QueueFullError  # QueueFullError: a full waiting queue (429)
from engine.sampling_params import SamplingParams

__all__ = ["AsyncEngine", "EngineDeadError", "QueueFullError"]
logger = logging.getLogger(__name__)

_IDLE_WAIT_S = 0.5          # how long an idle loop sleeps between stats refreshes


class AsyncEngine(EngineClient):
    """Runs `LLMEngine.step()` on a background thread so the event loop never blocks on the model.

    `engine` may be given instead of `config` (tests pass a prepared LLMEngine). `stall_timeout_s` is
    how long one step may take while there is work before `is_healthy()` turns False (None: no limit).
    """

    def __init__(self, config: EngineConfig | None = None, *, engine: LLMEngine | None = None,
                 stall_timeout_s: float | None = 120.0) -> None:
        super().__init__(stall_timeout_s)
        if engine is None:
            engine = LLMEngine(config)
        self.engine = engine
        self.config: EngineConfig = engine.config
        self.tokenizer = engine.tokenizer
        self.model_config = engine.model_config
        self.max_model_len: int = engine.max_model_len
        self.default_sampling_fields: dict = engine.default_sampling_fields
        self._commands: queue.Queue = queue.Queue()
        self._stopped = threading.Event()
        self._step_started: float | None = None     # monotonic time of the step in progress
        self._stats = engine.get_stats()
        self._thread = threading.Thread(target=self._run_loop, name="engine-loop", daemon=True)
        self._thread.start()

    # ----- asyncio side -------------------------------------------------------------------------

    async def _admit(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                     priority: int) -> None:
        await self._call(lambda eng: eng.add_request(request_id, prompt, params, priority=priority))

    def _send_abort(self, request_id: str) -> None:
        self._commands.put(("abort", request_id, None))

    async def get_stats(self) -> Any:
        """Fresh EngineStats read on the loop thread (the cached snapshot if the loop is dead)."""
        if not self.is_alive():
            return self._stats
        return await self._call(lambda eng: self._refresh_stats(eng))

    def is_alive(self) -> bool:
        return self._thread.is_alive() and self._error is None and not self._stopped.is_set()

    def _step_started_at(self) -> float | None:
        return self._step_started

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the loop thread; pending requests get EngineDeadError."""
        self._stopped.set()
        self._commands.put(("wake", None, None))
        self._thread.join(timeout)
        self._fail_all(EngineDeadError("engine was shut down"))

    async def _call(self, fn: Callable[[Any], Any]) -> Any:
        future: concurrent.futures.Future = concurrent.futures.Future()
        self._commands.put(("call", fn, future))
        if not self.is_alive():          # the loop may have died after the put; never hang
            self._fail_future(future)
        return await asyncio.wrap_future(future)

    # ----- loop thread ------------------------------------------------------------------------

    def _refresh_stats(self, eng: Any) -> Any:
        self._stats = eng.get_stats()
        return self._stats

    def _run_loop(self) -> None:
        eng = self.engine
        try:
            while not self._stopped.is_set():
                busy = eng.has_unfinished_requests()
                self._drain_commands(eng, block=not busy)
                if self._stopped.is_set():
                    break
                if eng.has_unfinished_requests():
                    self._step_started = time.monotonic()
                    outputs = eng.step()
                    self._step_started = None
                    self._dispatch(outputs)
                    if not outputs:
                        time.sleep(0)    # let the event-loop thread take the GIL (a chunk or an empty step)
                self._stats = eng.get_stats()
        except BaseException as exc:  # noqa: BLE001 - any loop failure must reach every waiting request
            logger.exception("engine loop failed")
            self._error = exc
            self._step_started = None
            self._fail_all(exc)

    def _drain_commands(self, eng: Any, block: bool) -> None:
        try:
            cmd = self._commands.get(timeout=_IDLE_WAIT_S) if block else self._commands.get_nowait()
        except queue.Empty:
            return
        while True:
            self._run_command(eng, *cmd)
            try:
                cmd = self._commands.get_nowait()
            except queue.Empty:
                return

    def _run_command(self, eng: Any, kind: str, arg: Any, future: Any) -> None:
        if kind == "abort":
            eng.abort_request([arg])
        elif kind == "call" and not future.done():     # done: its caller was cancelled
            try:
                result = arg(eng)
            except Exception as exc:  # noqa: BLE001 - handed back to the caller
                _settle(future, exc=exc)
            else:
                _settle(future, result=result)

    def _fail_all(self, exc: BaseException) -> None:
        self._fail_streams(exc)
        while True:
            try:
                _, _, future = self._commands.get_nowait()
            except queue.Empty:
                return
            if future is not None:
                self._fail_future(future)

    def _fail_future(self, future: concurrent.futures.Future) -> None:
        _settle(future, exc=self._dead_error())
