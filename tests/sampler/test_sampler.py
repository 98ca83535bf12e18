"""Sampler: greedy, top-k / top-p / min-p support and distribution, seeds, logprobs (CPU)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from engine.request import Request
from engine.sampler import Sampler, apply_top_k_top_p, apply_top_p_within_top_k
from engine.sampling_metadata import SamplingMetadata
from engine.sampling_params import SamplingParams

CPU = torch.device("cpu")


def make_request(params: SamplingParams, num_output_tokens: int = 0, rid: str = "r") -> Request:
    req = Request(rid, [1, 2, 3], params)
    for t in range(num_output_tokens):
        req.append_output_token(t % 7)
    return req


def sample(logits: torch.Tensor, requests: list[Request]):
    meta = SamplingMetadata.from_requests(requests, logits.shape[1], CPU)
    return Sampler()(logits, meta)


def reference_probs(logits_row: torch.Tensor, p: SamplingParams) -> np.ndarray:
    """float64 reference in vLLM V1's order: temperature, min-p (on the scaled distribution), top-k, then
    top-p (smallest prefix reaching p) on what is left renormalized."""
    x = logits_row.double().numpy() / p.temperature
    probs = np.exp(x - x.max())
    probs /= probs.sum()
    keep = probs >= p.min_p * probs.max()
    if p.top_k > 0:
        keep &= x >= np.sort(x)[::-1][p.top_k - 1]
    probs = np.where(keep, probs, 0.0)
    probs /= probs.sum()
    if p.top_p < 1:
        order = np.argsort(-probs)
        mass_before = np.cumsum(probs[order]) - probs[order]
        nucleus = np.zeros_like(keep)
        nucleus[order[mass_before < p.top_p]] = True
        probs = np.where(nucleus, probs, 0.0)
        probs /= probs.sum()
    return probs


def test_temperature_zero_is_argmax():
    logits = torch.randn(9, 50)
    reqs = [make_request(SamplingParams(temperature=0, top_k=3, top_p=0.5)) for _ in range(9)]
    out = sample(logits, reqs)
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))
    assert out.logprobs is None


def test_greedy_rows_in_mixed_batch_and_top_k_one():
    logits = torch.randn(8, 40)
    params = [SamplingParams(temperature=0) if i % 2 else SamplingParams(temperature=1.3, top_k=1)
              for i in range(8)]
    out = sample(logits, [make_request(p) for p in params])
    assert torch.equal(out.sampled_token_ids, logits.argmax(dim=-1))


def test_greedy_ties_take_lowest_index():
    logits = torch.zeros(2, 10)
    logits[:, 3] = logits[:, 7] = 5.0
    out = sample(logits, [make_request(SamplingParams(temperature=0)) for _ in range(2)])
    assert out.sampled_token_ids.tolist() == [3, 3]


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=0.8, top_k=5),
    SamplingParams(temperature=1.2, top_p=0.7),
    SamplingParams(temperature=1.0, min_p=0.15),
    SamplingParams(temperature=0.7, top_k=8, top_p=0.8, min_p=0.05),
    SamplingParams(temperature=0.9, top_p=0.8, min_p=0.2),
    SamplingParams(temperature=0.6, top_k=6, min_p=0.1),
    SamplingParams(temperature=1.5),
])
def test_filtered_sampling_support_and_distribution(params):
    torch.manual_seed(hash(repr(params)) % 1000)
    vocab, draws = 24, 3000
    row = torch.randn(vocab) * 2
    out = sample(row.expand(draws, vocab).contiguous(), [make_request(params) for _ in range(draws)])
    tokens = out.sampled_token_ids.numpy()
    expected = reference_probs(row, params)
    assert set(tokens.tolist()) <= set(np.flatnonzero(expected).tolist())
    freq = np.bincount(tokens, minlength=vocab) / draws
    tol = 5 * np.sqrt(expected * (1 - expected) / draws) + 3e-3
    assert np.all(np.abs(freq - expected) <= tol), (freq, expected)


@pytest.mark.parametrize("settings", [
    [SamplingParams(top_k=3), SamplingParams(top_p=0.5), SamplingParams(min_p=0.3),
     SamplingParams(top_k=10, top_p=0.9), SamplingParams()],
    [SamplingParams(top_k=2), SamplingParams(), SamplingParams(top_k=6, temperature=0.5), SamplingParams(top_k=-1)],
])
def test_support_per_row_with_different_settings(settings):
    """Different filters on different rows of one batch: each row stays inside its own allowed set."""
    torch.manual_seed(1)
    vocab, reps = 30, 200
    rows = torch.randn(len(settings), vocab) * 2
    logits = rows.repeat(reps, 1)
    out = sample(logits, [make_request(settings[i % len(settings)]) for i in range(len(logits))])
    tokens = out.sampled_token_ids.view(reps, len(settings))
    for j, p in enumerate(settings):
        allowed = set(np.flatnonzero(reference_probs(rows[j], p)).tolist())
        assert set(tokens[:, j].tolist()) <= allowed


def _seeded_tokens(seed_row: torch.Tensor, others: torch.Tensor, index: int, seed: int, step: int) -> int:
    logits = torch.cat([others[:index], seed_row[None], others[index:]])
    reqs = [make_request(SamplingParams(temperature=1.0), rid=f"o{i}") for i in range(len(others))]
    reqs.insert(index, make_request(SamplingParams(temperature=0.9, top_p=0.95, seed=seed), step))
    return sample(logits, reqs).sampled_token_ids[index].item()


def test_seed_reproducible_across_batches_and_positions():
    vocab = 500
    row = torch.randn(vocab) * 0.1                     # flat: a different draw is very likely to differ
    for step in range(4):
        a = _seeded_tokens(row, torch.randn(3, vocab), 0, seed=1234, step=step)
        b = _seeded_tokens(row, torch.randn(7, vocab), 5, seed=1234, step=step)
        c = _seeded_tokens(row, torch.randn(0, vocab), 0, seed=1234, step=step)
        assert a == b == c


def test_different_seeds_and_steps_differ():
    vocab = 500
    row = torch.randn(vocab) * 0.1
    others = torch.randn(2, vocab)
    by_seed = [tuple(_seeded_tokens(row, others, 1, seed=s, step=t) for t in range(4)) for s in (1, 2, 3)]
    assert len(set(by_seed)) == 3
    assert len(set(by_seed[0])) > 1                     # the step changes the noise


def test_min_p_is_applied_before_top_p():
    """vLLM V1: min-p on the temperature-scaled distribution, then top-p on what min-p left. Probs
    [.5, .3, .12, .08], min_p .2 (drops .08), top_p .85 on [.543, .326, .130]: tokens 0 and 1 at
    [.625, .375]; top-p first (the old order) drew token 2 at .130."""
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08], dtype=torch.float64)
    params = SamplingParams(temperature=1.0, top_p=0.85, min_p=0.2)
    expected = reference_probs(probs.log(), params)
    np.testing.assert_allclose(expected, [0.625, 0.375, 0, 0], atol=1e-12)
    torch.manual_seed(12)
    draws = 20000
    logits = probs.log().float().expand(draws, 4).contiguous()
    tokens = sample(logits, [make_request(params) for _ in range(draws)]).sampled_token_ids.numpy()
    freq = np.bincount(tokens, minlength=4) / draws
    assert freq[2] == freq[3] == 0
    assert abs(freq[0] - 0.625) <= 5 * np.sqrt(0.625 * 0.375 / draws), freq


def test_logprobs_are_raw_logits_float64_reference():
    """vLLM's raw_logprobs: log_softmax of the logits as the model gave them, before logit_bias, the
    allowed_token_ids mask, min_tokens bans, penalties, temperature and filters."""
    torch.manual_seed(2)
    vocab = 64
    logits = torch.randn(6, vocab) * 3
    logits[2, 7] = logits[2].max() - 0.5                 # the bias makes 7 the top token after processing
    params = [SamplingParams(temperature=0.5, top_k=4, min_p=0.1, logprobs=5),
              SamplingParams(temperature=0, logprobs=2),
              SamplingParams(logprobs=0, logit_bias={7: 2.5}),
              SamplingParams(temperature=2.0),
              SamplingParams(temperature=0, logprobs=5, allowed_token_ids=[1, 2, 3], repetition_penalty=1.8),
              SamplingParams(temperature=0.8, top_p=0.5, logprobs=3, min_tokens=2, stop_token_ids=[9],
                             frequency_penalty=1.5, presence_penalty=0.5)]
    reqs = [make_request(p, num_output_tokens=3) for p in params]
    out = sample(logits, reqs)
    assert out.logprob_token_ids.shape == (6, 6) and out.logprobs.shape == (6, 6)
    ref = torch.log_softmax(logits.double(), dim=-1)      # the raw logits
    assert torch.equal(out.logprob_token_ids[:, 0], out.sampled_token_ids)
    assert torch.equal(out.logprob_token_ids[:, 1:], ref.topk(5, dim=-1).indices)
    expected = ref.gather(1, out.logprob_token_ids).float()
    torch.testing.assert_close(out.logprobs, expected, rtol=1e-5, atol=1e-5)
    assert out.sampled_token_ids[4].item() in (1, 2, 3) and out.logprobs[4, 0] < ref[4].max()
    assert torch.equal(out.logprob_ranks, (ref >= ref.gather(1, out.logprob_token_ids[:, :1])).sum(dim=-1))


def test_sampled_token_rank_float64_reference():
    """The sampled token's rank in the raw logprobs (vLLM's Logprob.rank), computed on the device:
    as vLLM counts it, the tokens with a logprob at least as large (a float64 reference; ties count);
    none where no row asked for logprobs."""
    torch.manual_seed(3)
    vocab = 80
    logits = torch.randn(5, vocab) * 2
    logits[3, :3] = logits[3].max() + 1                  # a three-way tie at the top: greedy takes token 0
    logits[4, :2] = logits[4].max() + 1                  # two tokens above the allowed token 2
    logits[4, 2] = logits[4, 3] = logits[4].max() - 0.5   # 2 tied with 3, both below the two
    params = [SamplingParams(temperature=1.0, seed=1, logprobs=2), SamplingParams(temperature=2.0, logprobs=0),
              SamplingParams(temperature=0, logprobs=1, logit_bias={5: 50.0}), SamplingParams(temperature=0),
              SamplingParams(temperature=0, logprobs=3, allowed_token_ids=[2])]
    out = sample(logits, [make_request(p, num_output_tokens=1) for p in params])
    ref = torch.log_softmax(logits.double(), dim=-1)
    sampled = out.sampled_token_ids
    want = (ref >= ref.gather(1, sampled.unsqueeze(1))).sum(dim=-1)
    assert out.logprob_ranks.dtype == torch.int64 and torch.equal(out.logprob_ranks, want)
    assert sampled[2] == 5 and want[2] > 1                # the bias came after the raw logprobs
    assert sampled[3] == 0 and want[3] == 3 and sampled[4] == 2 and want[4] == 4
    plain = sample(logits, [make_request(SamplingParams(temperature=1.0)) for _ in range(5)])
    assert plain.logprob_ranks is None and plain.logprobs is None


def test_logprobs_capped_at_vocab():
    out = sample(torch.randn(1, 4), [make_request(SamplingParams(logprobs=20))])
    assert out.logprob_token_ids.shape == (1, 5)


def test_logits_not_modified():
    logits = torch.randn(3, 20)
    before = logits.clone()
    sample(logits, [make_request(SamplingParams(top_p=0.5, repetition_penalty=1.5, logit_bias={1: 3.0}), 3)
                    for _ in range(3)])
    assert torch.equal(logits, before)


def test_top_p_within_top_k_equals_full_sort_path():
    torch.manual_seed(5)
    logits = torch.randn(64, 300) * 3
    top_k = torch.randint(1, 40, (64,))
    top_p = torch.rand(64) * 0.9 + 0.05
    full = apply_top_k_top_p(logits, top_k, int(top_k.max()), top_p)
    fast = apply_top_p_within_top_k(logits, top_k, int(top_k.max()), top_p)
    assert torch.equal(torch.isinf(full), torch.isinf(fast))
    assert torch.equal(full[~torch.isinf(full)], logits[~torch.isinf(full)])
