"""What happens to engine requests when their HTTP request ends early: a refused prompt beside admitted ones,
a stream closed before it was read."""
from __future__ import annotations

import asyncio
import time

import pytest

from engine.async_engine import AsyncEngine
from engine.sampling_params import SamplingParams
from server_harness import engine_config, idle_stats

LONG = SamplingParams(max_tokens=120, temperature=0, ignore_eos=True)


@pytest.fixture
def async_engine(tiny_model_path):
    engine = AsyncEngine(engine_config(tiny_model_path))
    fast_step = engine.engine.step
    engine.engine.step = lambda: (time.sleep(0.02), fast_step())[1]    # 120 steps take >= 2.4 s
    yield engine
    engine.shutdown()


def test_closing_a_stream_never_read_aborts_its_request(async_engine):
    async def run():
        stream = await async_engine.add_request("unread", [1, 2, 3], LONG)
        await stream.aclose()
        return await idle_stats(async_engine, pause=0.01, tries=50)

    stats = asyncio.run(run())
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not async_engine._streams


def test_a_refused_prompt_aborts_the_request_s_other_prompts(server, http, slow_steps):
    resp = http.post("/v1/completions", json={"prompt": [[1, 2, 3], [4, 5, 6], [1, 10**6]], "max_tokens": 120,
                                              "ignore_eos": True})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "prompt"
    stats = server.wait_idle(timeout=1.0)      # the first two would run 120 steps of 20 ms each
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert not server.async_engine._streams
