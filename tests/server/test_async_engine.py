"""AsyncEngine on the real LLMEngine: outputs, abort on a vanished consumer, loop failures, liveness."""
from __future__ import annotations

import asyncio
import threading
import time

import httpx
import pytest

from engine import engine_client
from engine.async_engine import AsyncEngine, EngineDeadError
from engine.sampling_params import SamplingParams
from server_harness import ServerThread, engine_config, idle_stats, offline_generate

GREEDY = SamplingParams(max_tokens=6, temperature=0)


@pytest.fixture
def async_engine(tiny_model_path):
    engine = AsyncEngine(engine_config(tiny_model_path))
    yield engine
    engine.shutdown()


async def _collect(engine: AsyncEngine, request_id: str, prompt: str, params: SamplingParams):
    outputs = [out async for out in engine.generate(request_id, prompt, params)]
    return outputs


def test_generate_matches_offline_and_streams_deltas(async_engine, reference_engine):
    prompts = ["alpha beta", "gamma", "delta epsilon zeta"]
    expected = offline_generate(reference_engine, prompts, GREEDY)

    async def run():
        return await asyncio.gather(*(_collect(async_engine, f"r{i}", p, GREEDY) for i, p in enumerate(prompts)))

    for outputs, ref in zip(asyncio.run(run()), expected):
        assert outputs[-1].finished and not any(o.finished for o in outputs[:-1])
        final = outputs[-1].outputs[0]
        assert final.token_ids == ref[0].token_ids and final.text == ref[0].text
        assert sum((o.outputs[0].token_ids_delta for o in outputs), []) == final.token_ids
    assert async_engine.is_healthy()


def test_consumer_that_goes_away_aborts_its_request(async_engine):
    params = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)

    async def run():
        gen = async_engine.generate("leaver", "walk away", params)
        await gen.__anext__()
        await gen.aclose()                             # GeneratorExit path
        task = asyncio.create_task(_collect(async_engine, "cancelled", "cancel me", params))
        await asyncio.sleep(0.05)
        task.cancel()                                  # CancelledError path
        with pytest.raises(asyncio.CancelledError):
            await task
        return await idle_stats(async_engine, pause=0.01)

    stats = asyncio.run(run())
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_generation_tokens < 200


def test_duplicate_and_bad_requests_raise_value_error(async_engine):
    async def run():
        with pytest.raises(ValueError, match="max_model_len"):
            await async_engine.add_request("long", list(range(5, 200)), SamplingParams(max_tokens=4))
        with pytest.raises(ValueError, match="empty"):
            await async_engine.add_request("empty", [], GREEDY)
        stream = await async_engine.add_request("dup", "hello", SamplingParams(max_tokens=50, ignore_eos=True))
        with pytest.raises(ValueError, match="already in use"):
            await async_engine.add_request("dup", "hello", GREEDY)
        await stream.aclose()

    asyncio.run(run())
    assert async_engine.is_healthy()


def test_loop_failure_reaches_waiting_requests_and_marks_unhealthy(tiny_model_path):
    with ServerThread(engine_config(tiny_model_path)) as srv:
        engine = srv.async_engine
        started = threading.Event()

        def broken_step():
            started.set()
            raise RuntimeError("device lost")

        body = {"model": "tiny-qwen3", "prompt": "doomed", "max_tokens": 4}
        engine.engine.step = broken_step
        resp = httpx.post(f"{srv.base_url}/v1/completions", json=body, timeout=30)
        assert started.is_set()
        assert resp.status_code == 503 and "device lost" in resp.json()["error"]["message"]
        assert not engine.is_healthy() and isinstance(engine.error, RuntimeError)
        assert httpx.get(f"{srv.base_url}/health").status_code == 503
        assert httpx.post(f"{srv.base_url}/v1/completions", json=body, timeout=30).status_code == 503
        with pytest.raises(EngineDeadError):
            asyncio.run(engine.add_request("late", "x", GREEDY))


def test_stalled_step_is_unhealthy_until_it_returns(tiny_model_path):
    engine = AsyncEngine(engine_config(tiny_model_path), stall_timeout_s=0.2)
    fast_step = engine.engine.step
    engine.engine.step = lambda: (time.sleep(0.6), fast_step())[1]
    try:
        async def run():
            task = asyncio.create_task(_collect(engine, "slow", "slow", SamplingParams(max_tokens=2)))
            await asyncio.sleep(0.4)
            stalled = engine.is_healthy()
            await task
            return stalled

        assert asyncio.run(run()) is False
        assert engine.is_healthy()
    finally:
        engine.shutdown()



def test_a_step_wakes_each_event_loop_once(async_engine, reference_engine, monkeypatch):
    """Each step hands all its outputs for one event loop over in a single thread-safe callback (each
    such call wakes the loop and takes the GIL); the streams still get every token, in order."""
    prompts = ["alpha beta", "gamma", "delta epsilon zeta"]
    expected = offline_generate(reference_engine, prompts, GREEDY)
    batches: list[int] = []

    async def collect(stream):
        return [out async for out in stream]

    async def run():
        loop = asyncio.get_running_loop()
        call_soon = loop.call_soon_threadsafe

        def counting(callback, *args):
            if callback is engine_client._deliver:   # not wrap_future's own callbacks
                batches.append(len(args[0]))
            return call_soon(callback, *args)

        monkeypatch.setattr(loop, "call_soon_threadsafe", counting)
        streams = [await async_engine.add_request(f"b{i}", p, GREEDY) for i, p in enumerate(prompts)]
        return await asyncio.gather(*(collect(stream) for stream in streams))

    results = asyncio.run(run())
    for outputs, ref in zip(results, expected):
        assert outputs[-1].finished and outputs[-1].outputs[0].token_ids == ref[0].token_ids
        assert sum((out.outputs[0].token_ids_delta for out in outputs), []) == ref[0].token_ids
    # every output came in some batch (those a stream had not read yet were merged into one)
    assert sum(batches) >= sum(len(outputs) for outputs in results)
    assert max(batches) == len(prompts)   # a step's outputs for the three requests came in one callback
