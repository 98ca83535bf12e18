"""Penalties, logit_bias and the min_tokens mask against plain Python references (CPU)."""
from __future__ import annotations

import random

import pytest
import torch

from engine.penalties import apply_logit_processors
from engine.request import Request
from engine.sampler import Sampler
from engine.sampling_metadata import SamplingMetadata
from engine.sampling_params import SamplingParams

CPU = torch.device("cpu")


def make_request(params: SamplingParams, prompt: list[int], output: list[int], eos=()) -> Request:
    req = Request("r", prompt, params, eos_token_ids=tuple(eos))
    for t in output:
        req.append_output_token(t)
    return req


def reference_processed(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    """Plain per-element Python: bias, min_tokens mask, repetition, frequency, presence."""
    out = logits.double().clone()
    for i, r in enumerate(reqs):
        sp = r.sampling_params
        for tok, val in (sp.logit_bias or {}).items():
            out[i, tok] += val
        if r.num_output_tokens < sp.min_tokens:
            banned = set(sp.stop_token_ids or ()) | set(r.eos_token_ids)     # ignore_eos or not (vLLM)
            for tok in banned:
                out[i, tok] = float("-inf")
        for tok in range(out.shape[1]):
            count = r.output_token_ids.count(tok)
            x = out[i, tok].item()
            if count or tok in r.prompt_token_ids:
                x = x / sp.repetition_penalty if x > 0 else x * sp.repetition_penalty
            x -= sp.frequency_penalty * count
            x -= sp.presence_penalty * (count > 0)
            out[i, tok] = x
    return out


def random_tokens(n: int, vocab: int) -> list[int]:
    return [random.randrange(vocab) for _ in range(n)]


def test_penalties_and_bias_match_reference():
    random.seed(0)
    torch.manual_seed(0)
    vocab = 40
    params = [
        SamplingParams(repetition_penalty=1.7),
        SamplingParams(frequency_penalty=0.8, presence_penalty=-0.5),
        SamplingParams(),
        SamplingParams(repetition_penalty=0.6, frequency_penalty=-1.1, presence_penalty=1.3,
                       logit_bias={3: 4.0, 39: -7.5}),
        SamplingParams(logit_bias={0: 1.0}, min_tokens=5, stop_token_ids=[11]),
        SamplingParams(min_tokens=16, ignore_eos=True, stop_token_ids=[13]),
    ]
    reqs = [make_request(p, random_tokens(12, vocab), random_tokens(15, vocab), eos=(2,)) for p in params]
    logits = torch.randn(len(reqs), vocab) * 3
    meta = SamplingMetadata.from_requests(reqs, vocab, CPU)
    got = apply_logit_processors(logits, meta)
    torch.testing.assert_close(got.double(), reference_processed(logits, reqs), rtol=1e-5, atol=1e-5)


def test_defaults_skip_all_processing():
    reqs = [make_request(SamplingParams(), [1, 2], [3]) for _ in range(4)]
    meta = SamplingMetadata.from_requests(reqs, 10, CPU)
    assert meta.no_penalties and meta.no_logit_bias and meta.no_banned_tokens and meta.no_top_k_top_p
    logits = torch.randn(4, 10)
    assert apply_logit_processors(logits, meta) is logits


def test_min_tokens_masks_eos_and_stop_tokens_until_reached():
    vocab, eos, stop = 20, 5, 9
    logits = torch.zeros(4, vocab)
    logits[:, eos] = logits[:, stop] = 50.0              # EOS and the stop token dominate
    params = SamplingParams(temperature=0, min_tokens=3, stop_token_ids=[stop])
    reqs = [make_request(params, [1], [0] * n, eos=(eos,)) for n in (0, 2, 3)]
    reqs.append(make_request(SamplingParams(temperature=0, min_tokens=3, ignore_eos=True), [1], [], eos=(eos,)))
    out = Sampler()(logits, SamplingMetadata.from_requests(reqs, vocab, CPU)).sampled_token_ids.tolist()
    assert out[0] not in (eos, stop) and out[1] not in (eos, stop)
    assert out[2] == eos                                  # min_tokens reached: EOS allowed again
    assert out[3] != eos                                  # ignore_eos: EOS is still banned by min_tokens


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_min_tokens_bans_every_eos_id_even_with_ignore_eos(temperature):
    """vLLM bans all end-of-sequence ids (EOS ids and stop_token_ids) for the first min_tokens outputs,
    ignore_eos or not: logits that strongly favour the two EOS ids and the stop token, step by step."""
    vocab, eos, stop = 16, (3, 7), 11
    logits = torch.zeros(1, vocab)
    logits[0, [*eos, stop]] = 30.0
    params = SamplingParams(temperature=temperature, seed=1, min_tokens=4, ignore_eos=True,
                            stop_token_ids=[stop])
    req = make_request(params, [1], [], eos=eos)
    for _ in range(6):
        meta = SamplingMetadata.from_requests([req], vocab, CPU)
        req.append_output_token(Sampler()(logits, meta).sampled_token_ids.item())
    assert not set(req.output_token_ids[:4]) & {*eos, stop}, req.output_token_ids
    assert set(req.output_token_ids[4:]) <= {*eos, stop}     # then EOS is allowed again (ignore_eos)


def test_min_tokens_random_rows_never_draw_eos():
    vocab, eos = 12, 4
    logits = torch.zeros(500, vocab)
    logits[:, eos] = 3.0
    reqs = [make_request(SamplingParams(min_tokens=2), [1], [], eos=(eos,)) for _ in range(500)]
    out = Sampler()(logits, SamplingMetadata.from_requests(reqs, vocab, CPU)).sampled_token_ids
    assert not (out == eos).any()


def test_logit_bias_token_out_of_range_is_rejected():
    req = make_request(SamplingParams(logit_bias={10: 1.0}), [1], [])
    try:
        SamplingMetadata.from_requests([req], 10, CPU)
    except ValueError as err:
        assert "logit_bias" in str(err)
    else:
        raise AssertionError("expected ValueError")
