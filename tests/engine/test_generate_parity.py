"""Greedy parity with transformers on tiny random checkpoints (float32, CPU): tokens and logits.

Also under prefix caching with a shared prefix, chunked prefill (small token budget) and preemption
(small KV pool): the engine's scheduling must never change what is generated.
"""
import random

import pytest
import torch

from engine import LLM, SamplingParams

NUM_NEW = 32


def prompts(vocab: int, lens=(5, 17, 33, 50), seed=0, prefix_len=0):
    rng = random.Random(seed)
    prefix = [rng.randrange(3, vocab) for _ in range(prefix_len)]
    return [prefix + [rng.randrange(3, vocab) for _ in range(n)] for n in lens]


def hf_greedy(hf_model, prompt: list[int]) -> list[int]:
    ids = torch.tensor([prompt])
    out = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NUM_NEW, do_sample=False,
                            eos_token_id=None, pad_token_id=0)
    return out[0, len(prompt):].tolist()


def engine_greedy(llm: LLM, batch: list[list[int]]) -> list[list[int]]:
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True)
    return [o.outputs[0].token_ids for o in llm.generate(batch, params, use_tqdm=False)]


def record_logits(llm: LLM) -> list[torch.Tensor]:
    """Capture every compute_logits result of the engine's model."""
    seen, model = [], llm.engine.runner.model
    original = model.compute_logits

    def wrapped(hidden):
        logits = original(hidden)
        seen.append(logits.detach().clone())
        return logits
    model.compute_logits = wrapped
    return seen


def test_greedy_tokens_and_logits_match_transformers(checkpoint):
    path, hf_model = checkpoint
    llm = LLM(path, device="cpu", dtype="float32", seed=0)
    batch = prompts(hf_model.config.vocab_size)
    seen = record_logits(llm)
    got = engine_greedy(llm, batch)
    assert got == [hf_greedy(hf_model, p) for p in batch]
    first = seen[0]                              # the first step prefills every prompt: one row each
    assert first.shape[0] == len(batch)
    for row, prompt in zip(first, batch):
        with torch.no_grad():
            ref = hf_model(torch.tensor([prompt])).logits[0, -1].float()
        rel = (row - ref).norm() / ref.norm()
        assert rel < 1e-4, f"last-position logits differ: relative error {rel:.2e}"


def test_prefix_caching_hits_and_keeps_output(qwen3_checkpoint):
    path, hf_model = qwen3_checkpoint
    batch = prompts(hf_model.config.vocab_size, lens=(7, 20, 3), prefix_len=40, seed=1)
    llm = LLM(path, device="cpu", dtype="float32", enable_prefix_caching=True, block_size=16)
    assert engine_greedy(llm, batch[:1]) == [hf_greedy(hf_model, batch[0])]
    before = llm.engine.get_stats()
    got = engine_greedy(llm, batch[1:])
    stats = llm.engine.get_stats()
    assert got == [hf_greedy(hf_model, p) for p in batch[1:]]
    # Each later prompt shares the first 40 tokens: two full blocks of 16 come from the cache.
    assert stats.prefix_cache_hits - before.prefix_cache_hits >= 2 * 32


def test_chunked_prefill_keeps_output(qwen3_checkpoint):
    path, hf_model = qwen3_checkpoint
    batch = prompts(hf_model.config.vocab_size, lens=(45, 70, 9), seed=2)
    llm = LLM(path, device="cpu", dtype="float32", max_num_batched_tokens=16, max_num_seqs=4,
              enable_prefix_caching=False)
    seen = record_logits(llm)
    assert engine_greedy(llm, batch) == [hf_greedy(hf_model, p) for p in batch]
    assert len(seen) > NUM_NEW             # prompts took several steps each


def test_preemption_keeps_output(qwen3_checkpoint):
    path, hf_model = qwen3_checkpoint
    batch = prompts(hf_model.config.vocab_size, lens=(30, 25, 40, 20), seed=3)
    # 12 blocks of 8 tokens: the four requests (up to 72 tokens each) cannot all stay resident.
    llm = LLM(path, device="cpu", dtype="float32", block_size=8, num_kv_blocks=12, max_model_len=96,
              enable_prefix_caching=False)
    got = engine_greedy(llm, batch)
    assert llm.engine.get_stats().num_preemptions > 0
    assert got == [hf_greedy(hf_model, p) for p in batch]
    assert llm.engine.block_manager.num_free_blocks == 12


@pytest.mark.parametrize("bad, field", [({"temperature": -1}, "temperature"), ({"top_p": 0}, "top_p"),
                                        ({"top_p": 1.5}, "top_p"), ({"max_tokens": 0}, "max_tokens"),
                                        ({"temperature": 2.5}, "temperature"), ({"temperature": 0, "n": 2}, "n"),
                                        ({"repetition_penalty": 0}, "repetition_penalty"),
                                        ({"repetition_penalty": float("nan")}, "repetition_penalty"),
                                        ({"logprobs": -2}, "logprobs"), ({"logit_bias": {"x": 1.0}}, "logit_bias")])
def test_invalid_sampling_params_name_the_field(bad, field):
    with pytest.raises(ValueError, match=field):
        SamplingParams(**bad)


def test_vllms_sampling_rules(caplog):
    """vLLM's: a temperature in (0, 0.01) is raised to 0.01 with a warning, seed -1 is no seed, a
    repetition_penalty above 2 is allowed, logit_bias keys may be strings, -1 logprobs asks for all."""
    assert SamplingParams(temperature=1e-40).temperature == 0.01 and "maxed it out to 0.01" in caplog.text
    assert SamplingParams(seed=-1).seed is None and SamplingParams(seed=7).seed == 7
    assert SamplingParams(repetition_penalty=3.0).repetition_penalty == 3.0
    assert SamplingParams(logit_bias={"5": 1, 6: -2.5}).logit_bias == {5: 1.0, 6: -2.5}
    assert SamplingParams(temperature=0.5, n=3).n == 3 and SamplingParams(logprobs=-1).logprobs == -1
