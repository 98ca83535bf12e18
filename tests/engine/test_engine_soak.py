"""A long random run of the engine as a server drives it: requests with every sampling feature arrive at
random steps, some are aborted mid-way, the engine runs dry between bursts, the KV pool is small enough to
preempt and the step budget small enough to chunk prompts. After every burst nothing may be left behind
(blocks, block-table rows, output groups), and every answer must keep its request's rules."""
import random

import pytest

from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.sampling_params import SamplingParams

ALLOWED = [3, 17, 40, 63, 99]
MAX_NUM_SEQS = 6
CHOICES = ["yes", "no way"]


def random_params(rng: random.Random) -> SamplingParams:
    """One of the features at random, on top of greedy or seeded sampling."""
    base = dict(temperature=rng.choice([0, 0.8]), seed=rng.randrange(100), max_tokens=rng.randint(1, 24),
                ignore_eos=rng.random() < 0.7)
    feature = rng.choice(["plain", "penalty", "bad_words", "allowed", "logprobs", "prompt_logprobs", "min_tokens",
                          "n", "stop", "bias", "choice"])
    extra = {"plain": {}, "penalty": dict(repetition_penalty=1.3, frequency_penalty=0.4),
             "bad_words": dict(bad_words=["ab", "c"]), "allowed": dict(allowed_token_ids=ALLOWED),
             "logprobs": dict(logprobs=2), "prompt_logprobs": dict(prompt_logprobs=1),
             "min_tokens": dict(min_tokens=base["max_tokens"]), "n": dict(n=2, temperature=0.8),   # greedy: n = 1
             "stop": dict(stop=["e", "x"]),
             "bias": dict(logit_bias={5: 3.0}), "choice": dict(structured_outputs={"choice": CHOICES})}[feature]
    if feature == "choice":
        base["ignore_eos"] = False
    return SamplingParams(**{**base, **extra})


def check_answer(engine: LLMEngine, params: SamplingParams, output) -> None:
    for seq in output.outputs:
        ids = seq.token_ids
        assert 1 <= len(ids) <= params.max_tokens and seq.finish_reason in ("stop", "length"), seq
        if params.allowed_token_ids:
            assert set(ids) <= set(params.allowed_token_ids)
        if params.bad_words:
            text = engine.tokenizer.decode(ids)
            assert "ab" not in text and "c" not in text, text
        if params.structured_outputs is not None:
            assert seq.text in CHOICES if seq.finish_reason == "stop" else any(c.startswith(seq.text) for c in CHOICES)
        if params.min_tokens:
            assert len(ids) == params.max_tokens
        if params.logprobs is not None:
            assert len(seq.logprobs) == len(ids)
    if params.prompt_logprobs is not None:
        assert len(output.prompt_logprobs) == len(output.prompt_token_ids)
    assert len(output.outputs) == params.n


def drain(engine: LLMEngine, live: dict, rng: random.Random, answers: dict) -> None:
    """Step until idle, aborting a live request now and then; no output after its abort."""
    while engine.has_unfinished_requests():
        if live and rng.random() < 0.05:
            victim = rng.choice(sorted(live))
            engine.abort_request([victim])
            del live[victim]
        for out in engine.step():
            assert out.request_id in live, f"output for {out.request_id} after its abort or finish"
            if out.finished:
                answers[out.request_id] = (live.pop(out.request_id), out)


@pytest.mark.parametrize("async_scheduling", [True, False])
def test_random_bursts_leave_nothing_behind(qwen3_checkpoint, async_scheduling):
    engine = LLMEngine(EngineConfig(model=qwen3_checkpoint[0], device="cpu", dtype="float32", block_size=8,
                                    num_kv_blocks=24, max_model_len=96, max_num_batched_tokens=32,
                                    max_num_seqs=MAX_NUM_SEQS, async_scheduling=async_scheduling))
    rng = random.Random(11)
    answers, next_id = {}, 0
    for burst in range(16):
        live = {}
        for _ in range(rng.randint(1, 9)):
            params = random_params(rng)
            prompt = [rng.randrange(3, 250) for _ in range(rng.randint(2, 40))]
            engine.add_request(str(next_id), prompt, params)
            live[str(next_id)] = params
            next_id += 1
        drain(engine, live, rng, answers)
        assert not live and not engine.outputs.groups
        bm = engine.block_manager
        assert bm.num_free_blocks == bm.num_blocks, burst
        assert len(engine.runner.inputs.rows) <= MAX_NUM_SEQS
    assert len(answers) > 40 and engine.get_stats().num_preemptions > 0
    for params, output in answers.values():
        check_answer(engine, params, output)
