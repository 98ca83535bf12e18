"""EngineClient: the asyncio side of an engine that runs elsewhere (a thread or another process).

Per request, its unread outputs (merged into one while its consumer falls behind, as vLLM's output
collector, as its output kind says: engine/unread.py); a step's outputs reach each event loop in one
thread-safe callback.
Subclasses say how a request is admitted and aborted and whether the engine is alive:
`engine.async_engine.AsyncEngine` (a thread of this process) and
`engine.engine_process.ProcessAsyncEngine` (its own process, as vLLM's EngineCore).
"""
from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import threading
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

from engine.outputs import RequestOutput
from engine.sampling_params import SamplingParams
from engine.unread import Unread


class EngineDeadError(RuntimeError):
    """The engine loop stopped or crashed; no request can be served (the server answers 503)."""


@dataclass
class _Stream:
    loop: asyncio.AbstractEventLoop
    unread: Unread


class EngineClient:
    """Streams, request ids and errors; `_admit` and `_send_abort` reach the engine."""

    def __init__(self, stall_timeout_s: float | None) -> None:
        self.stall_timeout_s = stall_timeout_s
        self._streams: dict[str, _Stream] = {}
        self._streams_lock = threading.Lock()
        self._error: BaseException | None = None
        self._ids = itertools.count()
        # the model's default sampling fields (LLMEngine.default_sampling_fields), set by a subclass
        self.default_sampling_fields: dict = {}

    # ----- what a subclass provides ---------------------------------------------------------------

    async def _admit(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                     priority: int) -> None:
        """Queue the request in the engine; raise what `LLMEngine.add_request` raises."""
        raise NotImplementedError

    def _send_abort(self, request_id: str) -> None:
        raise NotImplementedError

    def is_alive(self) -> bool:
        raise NotImplementedError

    def _step_started_at(self) -> float | None:
        """The monotonic time the engine's step in progress began; None between steps."""
        raise NotImplementedError

    def _fail_all(self, exc: BaseException) -> None:
        """Every waiting stream and call gets `exc`."""
        raise NotImplementedError

    # ----- asyncio side -------------------------------------------------------------------------

    async def add_request(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                          priority: int = 0) -> "RequestStream":
        """Admit one request; raise ValueError (bad input, a priority other than 0 without priority
        scheduling), QueueFullError or EngineDeadError at once.

        Returns its RequestStream; closing it (read or not) or cancelling a read aborts the request.
        """
        self._check_alive()
        loop = asyncio.get_running_loop()
        stream = _Stream(loop, Unread(params.output_kind))
        with self._streams_lock:
            if request_id in self._streams:
                raise ValueError(f"request_id {request_id!r} is already in use")
            self._streams[request_id] = stream
        try:
            await self._admit(request_id, prompt, params, priority)
        except BaseException:
            self.abort(request_id)     # also covers a cancel that raced with the admission
            raise
        return RequestStream(self, request_id, stream.unread)

    async def generate(self, request_id: str, prompt: str | list[int], params: SamplingParams,
                       priority: int = 0) -> AsyncIterator[RequestOutput]:
        """Yield the request's outputs until it finishes; a consumer that goes away aborts it."""
        outputs = await self.add_request(request_id, prompt, params, priority)
        try:
            async for out in outputs:
                yield out
        finally:
            await outputs.aclose()

    def abort(self, request_id: str) -> None:
        """Abort a request (its KV blocks return to the pool); safe to call from any thread, any time."""
        if self._drop(request_id):
            self._send_abort(request_id)

    def is_healthy(self) -> bool:
        """Engine alive, not errored, and no step has been running longer than stall_timeout_s (None: no
        limit)."""
        return self.death_reason() is None

    def death_reason(self) -> str | None:
        """Why the engine serves no more (None while it does): its error (its process exited, a step
        raised, an unreadable message), its loop gone, or a step running for stall_timeout_s or longer."""
        if not self.is_alive():
            error = self._error
            return f"{type(error).__name__}: {error}" if error is not None else "the engine loop is not running"
        started = None if self.stall_timeout_s is None else self._step_started_at()
        if started is not None and (running := time.monotonic() - started) >= self.stall_timeout_s:
            return f"an engine step has run for {running:.1f} s (stall timeout {self.stall_timeout_s:g} s)"
        return None

    def mark_dead(self, error: BaseException) -> None:
        """Declare the engine dead from outside (the server's watchdog, on a stalled step): is_alive()
        turns False and every waiting request and call gets `error`."""
        if self._error is None:
            self._error = error
        self._fail_all(error)

    @property
    def stats(self) -> Any:
        """The engine's last EngineStats snapshot, kept by the subclass in `_stats` (taken after a step
        or a command batch, or sent with a step's outputs or an idle report): no waiting."""
        return self._stats

    def new_request_id(self, prefix: str) -> str:
        return f"{prefix}-{next(self._ids)}-{time.monotonic_ns():x}"

    @property
    def error(self) -> BaseException | None:
        return self._error

    def _check_alive(self) -> None:
        if not self.is_alive():
            raise self._dead_error()

    def _dead_error(self, cause: BaseException | None = None) -> EngineDeadError:
        """What a caller gets once the engine is gone; `cause`: why (default: the engine's error)."""
        error = cause if cause is not None else self._error
        return EngineDeadError(f"engine loop is not running (error: {error!r})")

    def _drop(self, request_id: str) -> bool:
        with self._streams_lock:
            return self._streams.pop(request_id, None) is not None

    # ----- engine side (any thread) -----------------------------------------------------------------

    def _dispatch(self, outputs: list[RequestOutput]) -> None:
        """Hand a step's outputs to their streams: one callback per event loop per step (each
        `call_soon_threadsafe` wakes the loop and takes the GIL), which delivers them in order."""
        deliveries: dict[asyncio.AbstractEventLoop, list[tuple[Unread, RequestOutput]]] = {}
        with self._streams_lock:
            for out in outputs:
                stream = self._streams.get(out.request_id)
                if stream is None:
                    continue
                if out.finished:
                    del self._streams[out.request_id]
                deliveries.setdefault(stream.loop, []).append((stream.unread, out))
        for loop, items in deliveries.items():
            try:
                loop.call_soon_threadsafe(_deliver, items)
            except RuntimeError:      # that event loop is closed
                pass

    def _fail_streams(self, exc: BaseException) -> None:
        """Every waiting stream ends with `exc` (its consumer raises EngineDeadError)."""
        with self._streams_lock:
            streams = list(self._streams.values())
            self._streams.clear()
        for stream in streams:
            try:
                stream.loop.call_soon_threadsafe(stream.unread.put, exc)
            except RuntimeError:      # that event loop is closed
                pass


class RequestStream:
    """One request's RequestOutputs as an async iterator, until the finished one. Closing it aborts an
    unfinished request even if it was never read (an async generator's `aclose` before its first
    `__anext__` runs no `finally`), and so does a read that is cancelled."""

    def __init__(self, client: EngineClient, request_id: str, outputs: Unread) -> None:
        self._client = client
        self._request_id = request_id
        self._outputs = outputs
        self._done = False

    def __aiter__(self) -> "RequestStream":
        return self

    async def __anext__(self) -> RequestOutput:
        if self._done:
            raise StopAsyncIteration
        try:
            item = await self._outputs.get()
        except BaseException:
            await self.aclose()
            raise
        if isinstance(item, BaseException):
            self._done = True           # its stream is gone already (_fail_streams)
            raise EngineDeadError(f"engine loop failed: {item!r}") from item
        self._done = item.finished
        return item

    async def aclose(self) -> None:
        """Abort the request unless it finished; later reads end the iteration."""
        if not self._done:
            self._done = True
            self._client.abort(self._request_id)


def _deliver(items: list[tuple[Unread, Any]]) -> None:
    """On the event loop: hand each output to its stream."""
    for unread, item in items:
        unread.put(item)


def _settle(future: concurrent.futures.Future, result: Any = None, exc: BaseException | None = None) -> None:
    """Set a future's outcome unless it is already done (cancelled by its caller, or failed)."""
    try:
        if exc is not None:
            future.set_exception(exc)
        else:
            future.set_result(result)
    except concurrent.futures.InvalidStateError:
        pass
