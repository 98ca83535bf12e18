"""Many concurrent streams, clients that disconnect (streaming or not), and the serve benchmark."""
from __future__ import annotations

import argparse
import asyncio
import json

import httpx
import pytest

from engine.bench import serve as bench_serve
from engine.sampling_params import SamplingParams
from server_harness import MODEL_NAME, engine_config, offline_generate

NUM_CLIENTS = 32


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    return start_server(engine_config(tiny_model_path, num_kv_blocks=512))


async def _stream_text(client: httpx.AsyncClient, prompt: str, max_tokens: int) -> tuple[str, str, dict]:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "stream": True,
            "stream_options": {"include_usage": True}}
    text, finish, usage = [], None, {}
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = [line async for line in resp.aiter_lines() if line]
    assert lines[-1] == "data: [DONE]"
    for line in lines[:-1]:
        chunk = json.loads(line.removeprefix("data: "))
        for choice in chunk["choices"]:
            text.append(choice["text"])
            finish = choice["finish_reason"] or finish
        usage = chunk.get("usage") or usage
    return "".join(text), finish, usage


async def _stream_then_disconnect(client: httpx.AsyncClient, prompt: str, num_chunks: int) -> int:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": 80, "ignore_eos": True, "stream": True}
    seen = 0
    async with client.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            seen += line.startswith("data: ")
            if seen >= num_chunks:
                break                  # leaving the block closes the connection mid-stream
    return seen


def test_concurrent_streams_then_disconnects_free_every_block(server, reference_engine, slow_steps):
    prompts = [f"Request {i}: tell me about {i * 7}" for i in range(NUM_CLIENTS)]
    expected = offline_generate(reference_engine, prompts, SamplingParams(max_tokens=8, temperature=0))

    async def run_all():
        limits = httpx.Limits(max_connections=2 * NUM_CLIENTS)
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60, limits=limits) as client:
            results = await asyncio.gather(*(_stream_text(client, p, 8) for p in prompts))
            before = (await server.async_engine.get_stats()).num_generation_tokens
            seen = await asyncio.gather(*(_stream_then_disconnect(client, p, 3) for p in prompts))
            return results, before, seen

    results, gen_before, seen = asyncio.run(run_all())
    for (text, finish, usage), ref in zip(results, expected):
        assert text == ref[0].text
        assert finish == "length" and usage["completion_tokens"] == 8
    assert seen == [3] * NUM_CLIENTS
    stats = server.wait_idle()
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_generation_tokens - gen_before < NUM_CLIENTS * 80     # they were cut off, not finished
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_non_streaming_disconnect_aborts(server, slow_steps):
    before = server.stats().num_generation_tokens
    body = {"model": MODEL_NAME, "prompt": "never read", "max_tokens": 100, "ignore_eos": True}
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=httpx.Timeout(60, read=0.3))
    stats = server.wait_idle()
    assert stats.num_free_blocks == stats.num_total_blocks
    assert stats.num_generation_tokens - before < 100
    assert httpx.get(f"{server.base_url}/health").status_code == 200


def test_serve_benchmark_against_the_server(server, tmp_path):
    parser = argparse.ArgumentParser()
    bench_serve.add_args(parser)
    out = tmp_path / "bench.json"
    args = parser.parse_args(["--base-url", server.base_url, "--num-prompts", "6", "--input-len", "4", "12",
                              "--output-len", "3", "6", "--max-concurrency", "3", "--request-rate", "50",
                              "--seed", "1", "--output", str(out)])
    summary = bench_serve.main(args)
    expected_output = sum(n for _, n in bench_serve.make_workload(args))
    assert summary["completed"] == 6 and summary["failed"] == 0
    assert summary["total_output_tokens"] == expected_output         # ignore_eos: exactly the asked lengths
    assert summary["model"] == MODEL_NAME
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        assert 0 < summary[key]["p50"] <= summary[key]["p99"]
    assert summary["ttft_ms"]["p50"] <= summary["e2e_ms"]["p50"]
    assert json.loads(out.read_text())["completed"] == 6
