"""ProcessAsyncEngine: AsyncEngine's interface with the LLMEngine in a process of its own.

The server's process keeps HTTP, SSE and the asyncio queues; the engine's process
(`engine.engine_core`) schedules, runs the model and detokenizes. In one process the two share a GIL,
and the engine thread waits for it behind the event loop's work on every CUDA call (docs/benchmarks.md,
"Serving"); vLLM separates them the same way. A reader thread here receives each step's packed
outputs, rebuilds them (`engine.output_wire`) and hands them to the streams.
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import multiprocessing
import queue
import threading
import time
from typing import Any

from engine.config import EngineConfig
from engine.engine_client import EngineClient, EngineDeadError, _settle
from engine.engine_core import run_engine_core
from engine.output_wire import OutputAssembler
from engine.sampling_params import SamplingParams

__all__ = ["ProcessAsyncEngine"]
logger = logging.getLogger(__name__)


class ProcessAsyncEngine(EngineClient):
    """Starts the engine's process and waits until it is ready (model loaded, KV cache sized, graphs
    captured); raises what the engine's start-up raised. `stall_timeout_s`: how long one step may take
    while there is work before `is_healthy()` turns False (None: no limit)."""

    def __init__(self, config: EngineConfig, *, stall_timeout_s: float | None = 120.0) -> None:
        super().__init__(stall_timeout_s)
        ctx = multiprocessing.get_context("spawn")     # CUDA cannot be forked
        commands_in, self._commands = ctx.Pipe(duplex=False)
        self._outputs, outputs_out = ctx.Pipe(duplex=False)
        self._step_started = ctx.Value("d", 0.0, lock=False)
        self._proc = ctx.Process(target=run_engine_core, name="engine-core", daemon=True,
                                 args=(config, commands_in, outputs_out, self._step_started,
                                       logging.getLogger().getEffectiveLevel()))
        self._proc.start()
        commands_in.close()
        outputs_out.close()
        info = self._wait_ready()
        self.config: EngineConfig = info["config"]
        self.tokenizer = info["tokenizer"]
        self.model_config = info["model_config"]
        self.max_model_len: int = info["max_model_len"]
        self.default_sampling_fields: dict = info["default_sampling_fields"]
        self._stats = info["stats"]
        self._outbox: queue.SimpleQueue = queue.SimpleQueue()   # commands, sent in order by the sender thread
        self._calls: dict[int, concurrent.futures.Future] = {}
        self._call_ids = itertools.count()
        self._stopped = threading.Event()
        self._assembler = OutputAssembler()
        self._aborted: list[str] = []      # appended by any thread, drained by the reader
        self._reader = threading.Thread(target=self._read_loop, name="engine-outputs", daemon=True)
        self._reader.start()
        self._sender = threading.Thread(target=self._send_loop, name="engine-commands", daemon=True)
        self._sender.start()

    def _wait_ready(self) -> dict:
        try:
            kind, value = self._outputs.recv()
        except EOFError:
            self._proc.join(5)
            raise RuntimeError(f"the engine process exited during start-up (exit code {self._proc.exitcode}); "
                               "its log above says why") from None
        if kind == "failed":
            self._proc.join(5)
            raise value
        return value

    # ----- asyncio side -------------------------------------------------------------------------

    async def _admit(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                     priority: int) -> None:
        future = self._new_call()
        self._send(("add", future.call_id, request_id, prompt, params, priority))
        await asyncio.wrap_future(future)

    def _send_abort(self, request_id: str) -> None:
        self._aborted.append(request_id)
        self._send(("abort", request_id))

    async def get_stats(self) -> Any:
        """Fresh EngineStats from the engine's process (the last snapshot if it is gone)."""
        if not self.is_alive():
            return self._stats
        future = self._new_call()
        self._send(("stats", future.call_id))
        return await asyncio.wrap_future(future)

    def is_alive(self) -> bool:
        return self._proc.is_alive() and self._error is None and not self._stopped.is_set()

    def _step_started_at(self) -> float | None:
        return self._step_started.value or None       # the engine's process writes 0.0 between steps

    def shutdown(self, timeout: float = 5.0) -> None:
        """Stop the engine's process; pending requests get EngineDeadError."""
        self._stopped.set()
        self._send(("shutdown",))
        self._outbox.put(None)
        self._sender.join(timeout)
        self._proc.join(timeout)
        if self._proc.is_alive():
            self._proc.terminate()
            self._proc.join(timeout)
        self._reader.join(timeout)
        self._commands.close()
        self._outputs.close()
        self._fail_all(EngineDeadError("engine was shut down"))

    def _new_call(self) -> concurrent.futures.Future:
        future: concurrent.futures.Future = concurrent.futures.Future()
        future.call_id = next(self._call_ids)
        self._calls[future.call_id] = future
        if not self.is_alive():          # the reader may have failed the calls already; never hang
            _settle(self._calls.pop(future.call_id, future), exc=self._dead_error())
        return future

    def _send(self, message: tuple) -> None:
        """Queue a command for the sender thread: a large prompt never blocks the event loop on a full pipe."""
        self._outbox.put(message)

    def _send_loop(self) -> None:
        while (message := self._outbox.get()) is not None:
            try:
                self._commands.send(message)
            except (OSError, ValueError):    # broken or closed pipe: the reader reports the dead engine
                return

    # ----- reader thread ------------------------------------------------------------------------

    def _read_loop(self) -> None:
        """Take the engine process's messages until it stops, then fail whatever still waits. A message
        this side cannot read (unpickle, unpack, or of an unknown kind) is fatal too, as an error in vLLM's
        output handler: every waiting request and call gets it, health turns False, and the engine
        process, whose outputs no one could read any more, is stopped."""
        kind: Any = None
        try:
            while True:
                kind = None                     # None until a message is unpickled
                message = self._outputs.recv()
                kind = message[0]
                if kind == "dead":              # the engine loop's own failure; its process is ending
                    self._fail(message[1])
                    return
                self._take(kind, message)
        except (EOFError, OSError) as exc:
            if kind is None:                    # the pipe closed: the process exited (or was shut down)
                self._fail(self._exit_error())
                return
            unreadable: BaseException = exc
        except BaseException as exc:  # noqa: BLE001 - any failure to read a message
            unreadable = exc
        self._fail(self._unreadable_error(kind, unreadable), log=False)
        self._stop_engine_process()

    def _take(self, kind: Any, message: tuple) -> None:
        """Apply one message of the engine process other than "dead"; an unknown kind raises."""
        if kind == "outputs":
            self._stats = message[2]
            self._dispatch(self._unpack(message[1]))
        elif kind == "reply":
            _, call_id, value, exc = message
            future = self._calls.pop(call_id, None)
            if future is not None:
                _settle(future, result=value, exc=exc)
        elif kind == "idle":
            self._stats = message[1]
        else:
            raise ValueError(f"unknown message kind {kind!r} (engine.engine_core sends outputs, reply, idle, dead)")

    def _exit_error(self) -> EngineDeadError:
        self._proc.join(1)
        return EngineDeadError("engine was shut down" if self._stopped.is_set()
                               else f"the engine process exited (exit code {self._proc.exitcode})")

    def _unreadable_error(self, kind: Any, exc: BaseException) -> EngineDeadError:
        """Log what failed (with its traceback) and return the error the waiting requests get."""
        what = "a message" if kind is None else f"a message of kind {kind!r}"
        logger.error("could not read %s from the engine process (%s: %s); failing its requests and stopping "
                     "the engine process", what, type(exc).__name__, exc, exc_info=exc)
        error = EngineDeadError(f"could not read {what} from the engine process ({type(exc).__name__}: {exc}); "
                                "the engine process was stopped")
        error.__cause__ = exc
        return error

    def _fail(self, error: BaseException, log: bool = True) -> None:
        """The engine is gone (unless we shut it down): is_alive() turns False, everything waiting gets `error`."""
        if not self._stopped.is_set():
            if log:
                logger.error("engine process failed: %r", error)
            self._error = error
        self._fail_all(error)

    def _stop_engine_process(self, timeout: float = 5.0) -> None:
        """Ask the engine process to shut down, draining its pipe meanwhile (it may be blocked sending a
        step's outputs); terminate it if it has not exited within `timeout`."""
        self._send(("shutdown",))
        deadline = time.monotonic() + timeout
        try:
            while time.monotonic() < deadline and self._proc.is_alive():
                if self._outputs.poll(0.1):
                    self._outputs.recv_bytes()          # unread: no one waits for it any more
        except (EOFError, OSError):                     # it exited (or shutdown() closed the pipe)
            pass
        self._proc.join(max(0.0, deadline - time.monotonic()))
        if self._proc.is_alive():
            logger.error("the engine process did not stop within %.0f s; terminating it", timeout)
            self._proc.terminate()
            self._proc.join(timeout)

    def _unpack(self, packed: list) -> list:
        """RequestOutputs of the requests that still have a stream (an aborted one's are dropped)."""
        while self._aborted:
            self._assembler.forget(self._aborted.pop())
        with self._streams_lock:
            live = [p for p in packed if p[0] in self._streams]
            gone = [p[0] for p in packed if p[0] not in self._streams]
        for request_id in gone:
            self._assembler.forget(request_id)
        return [self._assembler.unpack(p) for p in live]

    def _fail_all(self, exc: BaseException) -> None:
        self._fail_streams(exc)
        for call_id in list(self._calls):
            future = self._calls.pop(call_id, None)
            if future is not None:
                _settle(future, exc=self._dead_error(exc))
