"""What happens to engine requests when their HTTP request ends early: a refused prompt beside admitted ones,
a stream closed before it was read, a client gone before its stream's body started."""
from __future__ import annotations

import asyncio
import json
import time

import pytest

from engine.async_engine import AsyncEngine
from engine.sampling_params import SamplingParams
from server.app import create_app
from server.options import ServerOptions
from server.serving import merge
from server_harness import engine_config, idle_stats, offline_generate

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


@pytest.mark.parametrize("route, body", [
    ("/v1/completions", {"prompt": [1, 2, 3]}),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]})])
def test_a_client_gone_before_its_stream_starts_aborts_it(async_engine, route, body):
    """The client's disconnect reaches the app only once admission is over and the response starts: the
    stream's body never runs, and its engine request must be aborted all the same."""
    app = create_app(async_engine, "m", options=ServerOptions(disable_log_stats=True))
    payload = json.dumps({**body, "max_tokens": 100, "ignore_eos": True, "stream": True}).encode()
    calls = []

    async def receive():
        calls.append(None)
        if len(calls) == 1:
            return {"type": "http.request", "body": payload, "more_body": False}
        if len(calls) == 2:                 # the admission's disconnect watch: nothing until it is cancelled
            await asyncio.Event().wait()
        return {"type": "http.disconnect"}

    async def send(message):
        pass

    scope = {"type": "http", "asgi": {"version": "3.0", "spec_version": "2.3"}, "http_version": "1.1",
             "method": "POST", "scheme": "http", "path": route, "raw_path": route.encode(), "root_path": "",
             "query_string": b"", "headers": [(b"content-type", b"application/json")],
             "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 80)}

    async def run():
        await app(scope, receive, send)
        return await idle_stats(async_engine, pause=0.01, tries=50)

    stats = asyncio.run(run())
    assert len(calls) == 3
    assert stats.num_running == 0 and stats.num_waiting == 0
    assert not async_engine._streams


def test_a_reader_that_falls_behind_gets_the_unread_steps_merged(async_engine, reference_engine):
    """Outputs a consumer has not read yet are merged into one (as vLLM's output collector): a stalled
    client holds one cumulative output, not one copy per step; the merged deltas lose nothing."""
    params = SamplingParams(max_tokens=40, temperature=1.0, ignore_eos=True, n=2, seed=7, logprobs=1)
    expected = [c.token_ids for c in offline_generate(reference_engine, [[1, 2, 3]], params)[0]]

    async def run():
        stream = await async_engine.add_request("behind", [1, 2, 3], params)
        await idle_stats(async_engine, pause=0.02)        # every step done, nothing read
        return [out async for out in stream]

    outputs = asyncio.run(run())
    assert len(outputs) == 1 and outputs[0].finished
    for comp, tokens in zip(outputs[0].outputs, expected):
        assert comp.token_ids == comp.token_ids_delta == tokens
        assert comp.text_delta == comp.text and len(comp.logprobs) == len(tokens)


def test_merged_outputs_keep_what_was_read_before(async_engine):
    async def run():
        stream = await async_engine.add_request("half", [4, 5, 6], LONG)
        first = await stream.__anext__()
        await idle_stats(async_engine, pause=0.02)
        rest = [out async for out in stream]
        return first, rest

    first, rest = asyncio.run(run())
    assert len(rest) == 1
    final = rest[0].outputs[0]
    assert first.outputs[0].token_ids_delta + final.token_ids_delta == final.token_ids
    assert first.outputs[0].text_delta + final.text_delta == final.text


def test_merged_prompts_of_a_reader_that_falls_behind_stay_merged(async_engine):
    """merge() (a completions request's prompts) reads its streams only as its consumer does, so their
    unread outputs still merge: a few outputs per prompt, not one per step."""
    params = SamplingParams(max_tokens=40, temperature=0, ignore_eos=True)

    async def run():
        streams = [await async_engine.add_request(f"p{i}", [1 + i, 2, 3], params) for i in range(3)]
        merged = merge(streams)
        first = await merged.__anext__()
        await idle_stats(async_engine, pause=0.02)        # every step done, one output read
        return [first] + [item async for item in merged]

    items = asyncio.run(run())
    for i in range(3):
        outputs = [out for index, out in items if index == i]
        assert len(outputs) <= 4 and outputs[-1].finished     # read, queued, held by its pump, merged
        assert sum((out.outputs[0].token_ids_delta for out in outputs), []) == outputs[-1].outputs[0].token_ids
