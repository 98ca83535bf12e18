"""The server's periodic engine line, as vLLM logs it: throughput over the last interval, queue sizes,
KV-cache usage and the prefix cache's hit rate since start. `--disable-log-stats` turns it off; the interval is
`ENGINE_LOG_STATS_INTERVAL` seconds (vLLM's VLLM_LOG_STATS_INTERVAL; default 10)."""
from __future__ import annotations

import asyncio
import logging
import os
import time
from typing import Any, Callable

logger = logging.getLogger("engine.stats")

DEFAULT_INTERVAL_S = 10.0


def interval_from_env() -> float:
    """ENGINE_LOG_STATS_INTERVAL as a positive number of seconds, else the default."""
    text = os.environ.get("ENGINE_LOG_STATS_INTERVAL", "")
    try:
        value = float(text)
    except ValueError:
        return DEFAULT_INTERVAL_S
    return value if value > 0 else DEFAULT_INTERVAL_S


class StatsLogger:
    """Reads `async_engine.stats` (EngineStats) each interval and writes one line while the engine
    works; an idle interval (no tokens, nothing running or waiting) after another writes nothing (vLLM
    logs it at debug)."""

    def __init__(self, async_engine: Any, clock: Callable[[], float] = time.monotonic) -> None:
        self.async_engine = async_engine
        self.clock = clock
        self.last_time = clock()
        self.last = async_engine.stats
        self.was_idle = True

    def line(self) -> str | None:
        """The line for the interval since the last call, or None while idle."""
        now, stats = self.clock(), self.async_engine.stats
        elapsed = max(now - self.last_time, 1e-9)
        prompt = (stats.num_prompt_tokens - self.last.num_prompt_tokens) / elapsed
        generation = (stats.num_generation_tokens - self.last.num_generation_tokens) / elapsed
        idle = prompt == 0 and generation == 0 and stats.num_running == 0 and stats.num_waiting == 0
        quiet = idle and self.was_idle
        self.last_time, self.last, self.was_idle = now, stats, idle
        if quiet:
            return None
        hit_rate = stats.prefix_cache_hits / stats.prefix_cache_queries if stats.prefix_cache_queries else 0.0
        return (f"Avg prompt throughput: {prompt:.1f} tokens/s, Avg generation throughput: {generation:.1f} "
                f"tokens/s, Running: {stats.num_running} reqs, Waiting: {stats.num_waiting} reqs, KV cache usage: "
                f"{100 * stats.kv_cache_usage:.1f}%, Prefix cache hit rate: {100 * hit_rate:.1f}%")

    async def run(self, interval_s: float) -> None:
        """Log every `interval_s` seconds until cancelled."""
        while True:
            await asyncio.sleep(interval_s)
            try:
                text = self.line()
            except Exception:  # noqa: BLE001 - a bad snapshot must not end the logging (or the shutdown)
                logger.exception("engine stats line failed")
                continue
            if text is not None:
                logger.info(text)
