"""The periodic engine line (vLLM's "Avg prompt throughput ..."): its figures from the stats snapshots,
silence while idle, and the line in a running server's log (off with disable_log_stats)."""
from __future__ import annotations

import asyncio
import logging
import time
from types import SimpleNamespace

import pytest

from server.stats_logger import StatsLogger, interval_from_env
from server_harness import MODEL_NAME, ServerThread, engine_config, http_client


def snapshot(prompt=0, generation=0, running=0, waiting=0, usage=0.0, queries=0, hits=0):
    return SimpleNamespace(num_prompt_tokens=prompt, num_generation_tokens=generation, num_running=running,
                           num_waiting=waiting, kv_cache_usage=usage, prefix_cache_queries=queries,
                           prefix_cache_hits=hits)


def test_line_reports_the_interval_and_stays_quiet_while_idle():
    engine, now = SimpleNamespace(stats=snapshot()), [100.0]
    stats_logger = StatsLogger(engine, clock=lambda: now[0])
    now[0], engine.stats = 110.0, snapshot(prompt=500, generation=1200, running=3, waiting=2, usage=0.125,
                                           queries=400, hits=100)
    assert stats_logger.line() == ("Avg prompt throughput: 50.0 tokens/s, Avg generation throughput: 120.0 "
                                   "tokens/s, Running: 3 reqs, Waiting: 2 reqs, KV cache usage: 12.5%, "
                                   "Prefix cache hit rate: 25.0%")
    now[0], engine.stats = 115.0, snapshot(prompt=500, generation=1200, queries=400, hits=100)
    assert "Avg generation throughput: 0.0 tokens/s, Running: 0 reqs" in stats_logger.line()   # went idle
    now[0] = 125.0
    assert stats_logger.line() is None                                                          # still idle
    now[0], engine.stats = 126.0, snapshot(prompt=500, generation=1201, running=1, queries=400, hits=100)
    assert "Avg generation throughput: 1.0 tokens/s, Running: 1 reqs" in stats_logger.line()


@pytest.mark.parametrize("text,seconds", [("", 10.0), ("0.5", 0.5), ("x", 10.0), ("-1", 10.0)])
def test_interval_from_env(monkeypatch, text, seconds):
    monkeypatch.setenv("ENGINE_LOG_STATS_INTERVAL", text)
    assert interval_from_env() == seconds


@pytest.mark.parametrize("disable", [False, True])
def test_server_logs_the_line_while_it_works(tmp_path, monkeypatch, caplog, disable):
    monkeypatch.setenv("ENGINE_LOG_STATS_INTERVAL", "0.1")
    caplog.set_level(logging.INFO, logger="engine.stats")
    with ServerThread(engine_config("preset:tiny-qwen3"), disable_log_stats=disable) as server:
        with http_client(server) as client:
            resp = client.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hello", "max_tokens": 8,
                                                        "ignore_eos": True})
            assert resp.status_code == 200
        time.sleep(0.5)
    lines = [r.getMessage() for r in caplog.records if r.name == "engine.stats"]
    if disable:
        assert lines == []
    else:
        assert any("Avg generation throughput" in line for line in lines), lines
        assert "Running: 0 reqs, Waiting: 0 reqs" in lines[-1]


def test_a_failing_read_is_logged_and_the_logging_goes_on(caplog):
    class Flaky:
        reads = 0

        @property
        def stats(self):
            self.reads += 1
            if self.reads == 2:
                raise RuntimeError("snapshot lost")
            return snapshot(generation=self.reads)

    async def run_a_while():
        task = asyncio.create_task(StatsLogger(Flaky()).run(0.01))
        await asyncio.sleep(0.1)
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)

    caplog.set_level(logging.INFO, logger="engine.stats")
    asyncio.run(run_a_while())
    messages = [r.getMessage() for r in caplog.records if r.name == "engine.stats"]
    assert messages[0] == "engine stats line failed" and len(messages) > 2
