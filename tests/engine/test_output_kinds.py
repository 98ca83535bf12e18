"""SamplingParams.output_kind (vLLM's RequestOutputKind) on the real engines, tiny random checkpoint on CPU:
for seeded sampling with n = 2, a stop string, logprobs and prompt logprobs, the DELTA outputs add up to the
CUMULATIVE final output (text, token ids, logprobs; the prompt logprobs with the first output only) and
FINAL_ONLY is that final output alone, in LLMEngine, the thread-mode AsyncEngine (also for a consumer that
falls behind: its unread DELTA outputs joined) and the engine's own process (ProcessAsyncEngine). Each kind
runs alone with the prefix cache off, so every run computes the same bits."""
from __future__ import annotations

import asyncio
import dataclasses

import pytest

from engine import LLM, RequestOutputKind, SamplingParams
from engine.async_engine import AsyncEngine
from engine.config import EngineConfig
from engine.engine_process import ProcessAsyncEngine
from engine.llm_engine import LLMEngine
from engine.outputs import TOKEN_TIMES, RequestOutput

CUMULATIVE, DELTA, FINAL_ONLY = RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY
PROMPT = [5, 70, 71, 72, 33, 90]
BASE = SamplingParams(n=2, temperature=1.0, seed=11, max_tokens=24, logprobs=2, prompt_logprobs=1, ignore_eos=True)


def config(path: str) -> EngineConfig:
    return EngineConfig(model=path, device="cpu", dtype="float32", max_model_len=128, num_kv_blocks=64,
                        block_size=16, enable_prefix_caching=False)


@pytest.fixture(scope="module")
def engine(qwen3_checkpoint) -> LLMEngine:
    return LLMEngine(config(qwen3_checkpoint[0]))


def step_outputs(engine: LLMEngine, params: SamplingParams) -> list[RequestOutput]:
    """A request's outputs, step by step, run alone in `engine`."""
    engine.add_request("r", PROMPT, params)
    outs = []
    while engine.has_unfinished_requests():
        outs += engine.step()
    return outs


@pytest.fixture(scope="module")
def params(engine) -> SamplingParams:
    """BASE with a stop string its first sequence's text holds (two characters from its middle)."""
    [text] = {c.text for c in step_outputs(engine, BASE)[-1].outputs if c.index == 0}
    return dataclasses.replace(BASE, stop=[text[8:10]])


def joined(outs: list[RequestOutput]) -> dict[int, tuple]:
    """Per sequence, its DELTA outputs' text, token ids and logprobs joined, and its last finish and stop
    reasons; each output's delta fields are its text and ids."""
    seqs: dict[int, list] = {}
    for out in outs:
        for c in out.outputs:
            assert (c.text_delta, c.token_ids_delta) == (c.text, c.token_ids)
            text, ids, logprobs, _ = seqs.get(c.index, ("", [], [], None))
            seqs[c.index] = (text + c.text, ids + c.token_ids, logprobs + c.logprobs, (c.finish_reason, c.stop_reason))
    return seqs


def final_fields(final: RequestOutput) -> dict[int, tuple]:
    """Per sequence of a CUMULATIVE final output: what `joined` gives of DELTA outputs."""
    return {c.index: (c.text, c.token_ids, c.logprobs, (c.finish_reason, c.stop_reason)) for c in final.outputs}


def vllm_fields(out: RequestOutput) -> tuple:
    """What vLLM's RequestOutput holds of `out` (not the *_delta fields, which it has not, nor metrics)."""
    return (out.request_id, out.prompt, out.prompt_token_ids, out.prompt_logprobs, out.finished,
            out.num_cached_tokens, final_fields(out))


def check_kinds(by_kind: dict[RequestOutputKind, list[RequestOutput]], stop: str | None = None) -> None:
    """DELTA adds up to CUMULATIVE's final output and FINAL_ONLY is that output alone (its cumulative fields;
    its metrics hold the token times, one per step that brought tokens)."""
    cumulative, delta, final_only = by_kind[CUMULATIVE], by_kind[DELTA], by_kind[FINAL_ONLY]
    final = cumulative[-1]
    assert final.finished and len(cumulative) > 5 and len(final.outputs) == 2
    assert any(c.stop_reason == stop for c in final.outputs) and stop is not None
    assert joined(delta) == final_fields(final)
    assert delta[-1].finished and not any(out.finished for out in delta[:-1])
    assert delta[0].prompt_logprobs == final.prompt_logprobs is not None
    assert all(out.prompt_logprobs is None for out in delta[1:])
    assert len(final_only) == 1 and vllm_fields(final_only[0]) == vllm_fields(final)
    times = final_only[0].metrics[TOKEN_TIMES]       # a step per output of an engine read at once, or more
    assert len(times) >= len(cumulative) and times == sorted(times)


def test_sampling_params_check_the_output_kind():
    assert SamplingParams().output_kind is CUMULATIVE
    for bad in (1, "DELTA", None):
        with pytest.raises(ValueError, match="output_kind must be a RequestOutputKind"):
            SamplingParams(output_kind=bad)


def test_llm_engine_outputs_of_each_kind(engine, params):
    by_kind = {kind: step_outputs(engine, dataclasses.replace(params, output_kind=kind)) for kind in
               RequestOutputKind}
    assert len(by_kind[DELTA]) == len(by_kind[CUMULATIVE]) == len(by_kind[FINAL_ONLY][0].metrics[TOKEN_TIMES])
    check_kinds(by_kind, params.stop[0])


def test_llm_generate_asks_for_the_final_output_only(qwen3_checkpoint, engine, params):
    """LLM.generate submits FINAL_ONLY copies of the caller's params, which it leaves as they are."""
    llm = LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_model_len=128, num_kv_blocks=64,
              enable_prefix_caching=False)
    shared = dataclasses.replace(params, output_kind=DELTA)
    [out] = llm.generate([PROMPT], shared, use_tqdm=False)
    assert shared.output_kind is DELTA and TOKEN_TIMES in out.metrics
    assert vllm_fields(dataclasses.replace(out, request_id="r")) == vllm_fields(step_outputs(engine, params)[-1])


async def stream_outputs(client, params: SamplingParams, request_id: str, behind: bool = False) -> list:
    """A request's outputs as an EngineClient streams them; `behind`: read only once the engine is idle."""
    stream = await client.add_request(request_id, PROMPT, params)
    if behind:
        while (await client.get_stats()).num_running:
            await asyncio.sleep(0.02)
    return [out async for out in stream]


def client_outputs(client, params: SamplingParams) -> dict[RequestOutputKind, list[RequestOutput]]:
    async def run():
        return {kind: await stream_outputs(client, dataclasses.replace(params, output_kind=kind), "r")
                for kind in RequestOutputKind}
    return asyncio.run(run())


def test_thread_engine_outputs_of_each_kind(qwen3_checkpoint, params):
    client = AsyncEngine(config(qwen3_checkpoint[0]))
    try:
        check_kinds(client_outputs(client, params), params.stop[0])
        behind = asyncio.run(stream_outputs(client, dataclasses.replace(params, output_kind=DELTA), "late", True))
    finally:
        client.shutdown()
    assert len(behind) == 1            # a consumer that fell behind: the unread DELTA outputs joined in one
    final = step_outputs(LLMEngine(config(qwen3_checkpoint[0])), params)[-1]
    assert joined(behind) == final_fields(final) and behind[0].prompt_logprobs == final.prompt_logprobs


def test_process_engine_outputs_of_each_kind(qwen3_checkpoint, params):
    client = ProcessAsyncEngine(config(qwen3_checkpoint[0]))
    try:
        check_kinds(client_outputs(client, params), params.stop[0])
    finally:
        client.shutdown()
