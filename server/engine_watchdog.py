"""The engine watchdog: once the engine is dead, the HTTP server stops (and `python -m engine.serve` exits
non-zero) so that its supervisor (systemd, Kubernetes) restarts it, as vLLM's API server does (its watchdog
loop and exception handlers set uvicorn's `should_exit` unless VLLM_KEEP_ALIVE_ON_ENGINE_DEATH is set).

The engine is dead when its process exits or crashes, a step raises, the reader finds a message it cannot
read, or a step runs past the stalled-step timeout (`EngineClient.death_reason`; env
ENGINE_ITERATION_TIMEOUT_S, or vLLM's VLLM_ENGINE_ITERATION_TIMEOUT_S, sets it: `iteration_timeout_s`). With env
ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH (or vLLM's VLLM_KEEP_ALIVE_ON_ENGINE_DEATH) set to 1, the server keeps
running and answers 503 instead.
"""
from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Mapping

from engine.engine_client import EngineClient, EngineDeadError

logger = logging.getLogger(__name__)

KEEP_ALIVE_ENV_VARS = ("ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH", "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH")
ITERATION_TIMEOUT_ENV_VARS = ("ENGINE_ITERATION_TIMEOUT_S", "VLLM_ENGINE_ITERATION_TIMEOUT_S")
CUDA_ITERATION_TIMEOUT_S = 120.0    # no step of a GPU engine comes near this; a hung kernel or driver does
WATCH_INTERVAL_S = 1.0      # how often the watchdog reads the engine's liveness
GRACE_S = 0.5               # how long requests in flight have to send their error before the server stops
_TRUE, _FALSE = ("1", "true", "yes", "on"), ("", "0", "false", "no", "off")


def keep_alive_on_engine_death(environ: Mapping[str, str]) -> bool:
    """True where either of KEEP_ALIVE_ENV_VARS is set true (1, true, yes, on); raises ValueError naming
    a variable set to anything else than those or 0, false, no, off."""
    keep = False
    for name in KEEP_ALIVE_ENV_VARS:
        value = environ.get(name, "").strip().lower()
        if value not in _TRUE + _FALSE:
            raise ValueError(f"env {name} must be 1 (keep serving 503s once the engine is dead) or 0 "
                             f"(stop the server), got {environ[name]!r}")
        keep = keep or value in _TRUE
    return keep


def iteration_timeout_s(environ: Mapping[str, str], device_type: str) -> float | None:
    """How long one engine step may run before the engine counts as stalled (dead); None: no limit.

    The first of ITERATION_TIMEOUT_ENV_VARS that is set decides: seconds > 0, or 0 for no limit (raises
    ValueError naming the variable for anything else). Unset: CUDA_ITERATION_TIMEOUT_S on a GPU, no limit
    on the CPU, where one prefill step of a large model can take minutes."""
    for name in ITERATION_TIMEOUT_ENV_VARS:
        if name in environ:
            try:
                seconds = float(environ[name])
            except ValueError:
                seconds = -1.0
            if not seconds >= 0 or seconds == float("inf"):
                raise ValueError(f"env {name} must be a number of seconds > 0 (how long one engine step may "
                                 f"run), or 0 for no limit, got {environ[name]!r}")
            return seconds or None
    return CUDA_ITERATION_TIMEOUT_S if device_type == "cuda" else None


async def watch_engine(client: EngineClient, on_death: Callable[[str], None], interval_s: float = WATCH_INTERVAL_S,
                       grace_s: float = GRACE_S) -> None:
    """Read `client`'s death_reason() every `interval_s` (requests in flight or not); the first time it
    names one, declare a stalled engine dead (its waiting requests get the error), give requests in flight
    `grace_s` to send their errors, then call `on_death(reason)` and return."""
    while (reason := client.death_reason()) is None:
        await asyncio.sleep(interval_s)
    if client.is_alive():               # alive but stalled: it serves no more either
        client.mark_dead(EngineDeadError(f"the engine is stalled: {reason}"))
    await asyncio.sleep(grace_s)
    on_death(reason)


class StopServerOnEngineDeath:
    """`on_death` for a uvicorn server: logs that the engine died and why, and sets the server's
    `should_exit`; `reason` (None until then) tells its caller to exit non-zero."""

    def __init__(self) -> None:
        self.server = None          # the uvicorn.Server to stop, set once it exists
        self.reason: str | None = None

    def __call__(self, reason: str) -> None:
        self.reason = reason
        logger.error("the engine died (%s); stopping the server so that its supervisor can restart it "
                     "(env ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH=1 keeps it serving 503s instead)", reason)
        if self.server is not None:
            self.server.should_exit = True
