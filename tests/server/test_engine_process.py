"""ProcessAsyncEngine: the engine in its own process streams exactly what the in-process AsyncEngine
streams; refusals, aborts, a dying engine process and start-up failures reach the caller."""
from __future__ import annotations

import asyncio
import logging
import multiprocessing
import os
import re
import signal
import time

import pytest

from engine.async_engine import AsyncEngine
from engine.engine_client import EngineDeadError
from engine.engine_process import ProcessAsyncEngine
from engine.llm_engine import LLMEngine
from engine.outputs import CompletionOutput, Logprob, RequestOutput
from engine.output_wire import OutputAssembler, pack_output
from engine.sampling_params import SamplingParams
from server_harness import (MODEL_NAME, ServerThread, engine_config, idle_stats, offline_generate, offline_outputs,
                            openai_client)

MIXED = [SamplingParams(max_tokens=8, temperature=0),
         SamplingParams(max_tokens=8, temperature=0.8, seed=3, n=2, logprobs=2),
         SamplingParams(max_tokens=20, temperature=0, stop=["e"], include_stop_str_in_output=False),
         SamplingParams(max_tokens=12, temperature=1.0, top_k=5, seed=7, stop_token_ids=[101])]


@pytest.fixture(scope="module")
def process_engine(tiny_model_path):
    engine = ProcessAsyncEngine(engine_config(tiny_model_path))
    yield engine
    engine.shutdown()


async def _collect(engine, request_id: str, prompt, params: SamplingParams) -> list[RequestOutput]:
    return [out async for out in engine.generate(request_id, prompt, params)]


async def _run_mixed(engine) -> list[list[RequestOutput]]:
    return await asyncio.gather(*(_collect(engine, f"m{i}", f"prompt number {i}", p) for i, p in enumerate(MIXED)))


def _final(outs: list[RequestOutput]) -> list[tuple]:
    """What a stream ends with, per completion: ids, text, finish and stop reasons."""
    return [(c.token_ids, c.text, c.finish_reason, c.stop_reason) for c in outs[-1].outputs]


def _deltas_add_up(outs: list[RequestOutput]) -> bool:
    """Each completion's text and id deltas, step by step, add up to its cumulative fields."""
    text, ids = {}, {}
    for out in outs:
        for c in out.outputs:
            text[c.index] = text.get(c.index, "") + c.text_delta
            ids[c.index] = ids.get(c.index, []) + c.token_ids_delta
            if text[c.index] != c.text or ids[c.index] != c.token_ids:
                return False
    return True


def test_streams_equal_the_in_process_engine(process_engine, tiny_model_path):
    """Greedy, seeded n = 2 with logprobs, a stop string and a stop token, four at once: each stream
    ends as the in-process engine's (ids, text, finish / stop reasons, logprobs to 1e-4: how the four
    share steps depends on their arrival, and CPU matmuls of other batch sizes may differ in the last
    bits), and its deltas add up to its cumulative outputs at every step."""
    thread_engine = AsyncEngine(engine_config(tiny_model_path))
    try:
        expected = asyncio.run(_run_mixed(thread_engine))
    finally:
        thread_engine.shutdown()
    got = asyncio.run(_run_mixed(process_engine))
    assert [_final(outs) for outs in got] == [_final(outs) for outs in expected]
    for mine, theirs in zip(got[1][-1].outputs, expected[1][-1].outputs):
        assert len(mine.logprobs) == len(theirs.logprobs) == len(mine.token_ids)
        for lp, ref in zip(mine.logprobs, theirs.logprobs):
            assert list(lp) == list(ref) and all(abs(lp[t].logprob - ref[t].logprob) < 1e-4 for t in lp)
            assert all(isinstance(e, Logprob) for e in lp.values())
            assert [e.decoded_token for e in lp.values()] == [e.decoded_token for e in ref.values()]
            # the top k's ranks are their places; the sampled token's may move at a near-tie of its logprob
            assert [e.rank for e in lp.values()][1:] == [e.rank for e in ref.values()][1:]
            assert abs(next(iter(lp.values())).rank - next(iter(ref.values())).rank) <= 1
    assert all(_deltas_add_up(outs) and len(outs) > 1 for outs in got)   # streamed, not one final output
    assert len(got[1][-1].outputs) == 2


def test_bad_requests_are_refused_and_others_go_on(process_engine, reference_engine):
    too_long = list(range(5, 200))          # max_model_len is 128

    async def run():
        with pytest.raises(ValueError, match="max_model_len"):
            await process_engine.add_request("long", too_long, SamplingParams(max_tokens=4))
        ok = asyncio.create_task(_collect(process_engine, "fine", "still served", SamplingParams(max_tokens=6,
                                                                                                temperature=0)))
        await asyncio.sleep(0)
        with pytest.raises(ValueError, match="already in use"):
            await process_engine.add_request("fine", "dup", SamplingParams(max_tokens=4))
        return await ok

    outputs = asyncio.run(run())
    ref = offline_generate(reference_engine, ["still served"], SamplingParams(max_tokens=6, temperature=0))[0]
    assert outputs[-1].finished and outputs[-1].outputs[0].token_ids == ref[0].token_ids
    assert process_engine.is_healthy()


def test_the_priority_crosses_to_the_engine_process(process_engine):
    """The fcfs engine in the child refuses a priority other than 0 (vLLM's message): it got the value."""
    params = SamplingParams(max_tokens=3, temperature=0)

    async def run():
        with pytest.raises(ValueError, match="^Got priority 2 but Priority scheduling is not enabled.$"):
            await process_engine.add_request("prio", "abc", params, priority=2)
        return await _collect_with_priority(process_engine, "prio-0", "abc", params, 0)

    assert asyncio.run(run())[-1].finished
    assert process_engine.is_healthy()


def test_prompt_logprobs_cross_from_the_engine_process(process_engine, reference_engine):
    """Every streamed output carries the complete prompt logprobs (sent once, with the first), equal to
    the offline engine's; n = 2 shares one list."""
    params = SamplingParams(max_tokens=5, temperature=1.0, seed=4, n=2, prompt_logprobs=2)
    want = offline_outputs(reference_engine, ["prompt logprobs, please"], params)[0]
    outs = asyncio.run(_collect(process_engine, "plp", "prompt logprobs, please", params))
    assert len(outs) > 1 and outs[-1].finished
    for out in outs:
        assert [list(e or ()) for e in out.prompt_logprobs] == [list(e or ()) for e in want.prompt_logprobs]
        for got, ref in zip(out.prompt_logprobs[1:], want.prompt_logprobs[1:]):
            assert [e.logprob for e in got.values()] == pytest.approx([e.logprob for e in ref.values()], abs=1e-4)
            assert [(e.rank, e.decoded_token) for e in got.values()] == [(e.rank, e.decoded_token)
                                                                         for e in ref.values()]


async def _collect_with_priority(engine, request_id: str, prompt, params: SamplingParams, priority: int):
    return [out async for out in engine.generate(request_id, prompt, params, priority)]


def test_a_consumer_that_goes_away_frees_its_blocks(process_engine):
    params = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)

    async def run():
        gen = process_engine.generate("leaver", "walk away", params)
        await gen.__anext__()
        await gen.aclose()
        return await idle_stats(process_engine, pause=0.02)

    stats = asyncio.run(run())
    assert stats.num_running == 0 and stats.num_free_blocks == stats.num_total_blocks


def test_a_dead_engine_process_fails_its_requests(tiny_model_path):
    engine = ProcessAsyncEngine(engine_config(tiny_model_path))
    params = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)

    async def run():
        gen = engine.generate("victim", "doomed", params)
        await gen.__anext__()
        os.kill(engine._proc.pid, signal.SIGKILL)
        with pytest.raises(EngineDeadError):
            async for _ in gen:
                pass
        with pytest.raises(EngineDeadError):
            await engine.add_request("late", "x", params)

    try:
        asyncio.run(run())
        assert not engine.is_alive() and not engine.is_healthy()
        assert "exited" in str(engine.error)
    finally:
        engine.shutdown()


class _BadMessageNext:
    """The engine's output pipe, whose next recv() returns `message` instead of the engine's."""

    def __init__(self, conn, message) -> None:
        self._conn, self._message = conn, message

    def recv(self):
        message, self._message = self._message, None
        return self._conn.recv() if message is None else message

    def __getattr__(self, name):
        return getattr(self._conn, name)


def _unpack_fails(engine) -> None:
    def corrupt(packed):
        raise RuntimeError("corrupt packed output")
    engine._assembler.unpack = corrupt


def _unknown_kind(engine) -> None:
    engine._outputs = _BadMessageNext(engine._outputs, ("bogus", 1))


@pytest.mark.parametrize("inject, what", [(_unpack_fails, "of kind 'outputs'.*corrupt packed output"),
                                          (_unknown_kind, "of kind 'bogus'.*unknown message kind")])
def test_an_unreadable_message_fails_requests_and_stops_the_engine_process(tiny_model_path, caplog, inject, what):
    """As vLLM's output handler: a message the reader cannot read ends every waiting request with the
    error (no hang), later requests are refused, health turns False, a log line names the failure, and
    the engine process is shut down rather than left generating for no one."""
    engine = ProcessAsyncEngine(engine_config(tiny_model_path))
    params = SamplingParams(max_tokens=100, temperature=0, ignore_eos=True)

    async def run():
        gen = engine.generate("unread", "no one reads this", params)
        await gen.__anext__()
        inject(engine)
        with pytest.raises(EngineDeadError, match=what):
            await asyncio.wait_for(_drain(gen), 30)
        with pytest.raises(EngineDeadError, match=what):
            await engine.add_request("late", "x", params)

    try:
        with caplog.at_level(logging.ERROR, logger="engine.engine_process"):
            asyncio.run(run())
            engine._proc.join(30)     # the reader waits up to 5 s, then terminates it and waits 5 s more
        assert engine._proc.exitcode == 0          # it took the shutdown command, not a kill
        assert not engine.is_alive() and not engine.is_healthy()
        assert re.search("could not read a message " + what, str(engine.error))
        assert re.search("could not read a message " + what, caplog.text)
        assert "stopping the engine process" in caplog.text
    finally:
        engine.shutdown()


async def _drain(gen) -> None:
    async for _ in gen:
        pass


def test_a_stalled_step_is_unhealthy(process_engine):
    """The engine's process marks the step in progress in shared memory; is_healthy reads it."""
    assert process_engine.is_healthy()
    process_engine._step_started.value = time.monotonic() - 2 * process_engine.stall_timeout_s
    try:
        assert not process_engine.is_healthy()
    finally:
        process_engine._step_started.value = 0.0
    assert process_engine.is_healthy()


def test_start_up_failure_is_raised_in_the_caller(tmp_path):
    with pytest.raises(Exception, match="config.json|not a|no such|does not"):
        ProcessAsyncEngine(engine_config(str(tmp_path / "missing-model")))


def test_server_on_the_engine_process(tiny_model_path, reference_engine):
    prompts = ["Hello, my name is", "1 2 3 4"]
    ref = offline_generate(reference_engine, prompts, SamplingParams(max_tokens=8, temperature=0))
    with ServerThread(engine_config(tiny_model_path), engine_cls=ProcessAsyncEngine) as srv:
        client = openai_client(srv)
        resp = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=8, temperature=0)
        assert [c.text for c in resp.choices] == [r[0].text for r in ref]
        stream = client.completions.create(model=MODEL_NAME, prompt=prompts[0], max_tokens=8, temperature=0,
                                           stream=True)
        assert "".join(chunk.choices[0].text for chunk in stream) == ref[0][0].text
        assert srv.wait_idle().num_free_blocks == srv.stats().num_total_blocks


def test_packed_outputs_rebuild_the_cumulative_ones():
    """pack_output keeps the deltas only, Logprobs as tuples; OutputAssembler appends them back as Logprobs
    (-inf, a None rank or text and the dicts' order kept)."""
    lps = [{5: Logprob(-1.0, 2, "a"), 9: Logprob(-0.25, 1, "z")}, {6: Logprob(float("-inf"), 40, "b")},
           {7: Logprob(-0.5)}]
    prompt_lps = [None, {2: Logprob(-3.0, 7, "p"), 4: Logprob(-0.1, 1, None)}]
    steps = [RequestOutput("r", "p", [1, 2], [CompletionOutput(0, "ab", [5, 6], logprobs=lps[:2], text_delta="ab",
                                                                token_ids_delta=[5, 6])], False,
                           prompt_logprobs=prompt_lps),
             RequestOutput("r", "p", [1, 2], [CompletionOutput(0, "abc", [5, 6, 7], "stop", "c", logprobs=lps,
                                                                text_delta="c", token_ids_delta=[7])], True,
                           prompt_logprobs=prompt_lps)]
    assembler = OutputAssembler()
    rebuilt = [assembler.unpack(pack_output(out, first=i == 0)) for i, out in enumerate(steps)]
    assert rebuilt == steps
    assert [list(step) for step in rebuilt[1].outputs[0].logprobs] == [[5, 9], [6], [7]]
    assert pack_output(steps[1], first=False)[5] == [(0, "c", [7], "stop", "c", [((7, -0.5, None, None),)])]
    with pytest.raises(ValueError, match="carries no prompt"):
        OutputAssembler().unpack(pack_output(steps[1], first=False))


def test_the_packed_engine_steps_equal_its_outputs_packed(tiny_model_path):
    """LLMEngine(packed_outputs=True), as the engine's process runs it: each step returns what engine_core
    made before of the default engine's outputs, packed (the prompt with each request's first output),
    for the mixed requests and one with prompt logprobs and logprobs, n = 2; two fresh engines (equal
    caches, so equal batches and bits)."""
    plain, packed = LLMEngine(engine_config(tiny_model_path)), LLMEngine(engine_config(tiny_model_path),
                                                                         packed_outputs=True)
    params = [*MIXED, SamplingParams(max_tokens=5, temperature=1.0, seed=4, n=2, prompt_logprobs=2, logprobs=1)]
    for engine in (plain, packed):
        for i, p in enumerate(params):
            engine.add_request(f"pk{i}", f"prompt number {i}", p)
    started, num_outputs = set(), 0
    while plain.has_unfinished_requests():
        want = []
        for out in plain.step():
            want.append(pack_output(out, first=out.request_id not in started))
            started.add(out.request_id)
        assert packed.step() == want
        num_outputs += len(want)
    assert not packed.has_unfinished_requests() and not packed.outputs.groups and num_outputs > 10


def test_logprobs_cross_the_pipe_as_equal_logprob_objects(reference_engine):
    """The engine process's transport in one process: each step's outputs packed as EngineCore.report
    packs them, sent through a multiprocessing pipe (pickled, as the engine's), rebuilt by the
    OutputAssembler: equal to the engine's own, Logprob objects (logprob, rank, decoded_token) and the
    dicts' order (the sampled or prompt token first) included."""
    params = SamplingParams(max_tokens=6, temperature=1.0, seed=2, n=2, logprobs=3, prompt_logprobs=2)
    reference_engine.add_request("wire", "logprobs over the wire", params)
    sender, receiver = multiprocessing.Pipe()
    assembler, num_outputs = OutputAssembler(), 0
    while reference_engine.has_unfinished_requests():
        for out in reference_engine.step():
            sender.send(pack_output(out, first=num_outputs == 0))
            rebuilt = assembler.unpack(receiver.recv())
            num_outputs += 1
            assert rebuilt == out
            assert [[list(d) for d in c.logprobs] for c in rebuilt.outputs] == [[list(d) for d in c.logprobs]
                                                                                 for c in out.outputs]
            assert [list(d or ()) for d in rebuilt.prompt_logprobs] == [list(d or ()) for d in out.prompt_logprobs]
    assert num_outputs > 1 and rebuilt.finished
    entries = [d for c in rebuilt.outputs for d in c.logprobs] + rebuilt.prompt_logprobs[1:]
    assert len(entries) == 12 + len(rebuilt.prompt_token_ids) - 1
    assert all(isinstance(lp, Logprob) and lp.rank >= 1 and isinstance(lp.decoded_token, str)
               for d in entries for lp in d.values())
