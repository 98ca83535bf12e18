"""Sampler on CUDA (skipped without a GPU): agrees with CPU on greedy/logprobs, seeds hold in any batch,
and a step never waits on the host."""
from __future__ import annotations

import pytest
import torch

from engine.request import Request
from engine.sampler import Sampler
from engine.sampling_metadata import SamplingMetadata
from engine.sampling_params import SamplingParams

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
CUDA = torch.device("cuda")


def make_request(params: SamplingParams, num_output_tokens: int = 0) -> Request:
    req = Request("r", [1, 2, 3], params, eos_token_ids=(0,))
    for t in range(num_output_tokens):
        req.append_output_token(t + 5)
    return req


def run(logits: torch.Tensor, reqs: list[Request]):
    return Sampler()(logits, SamplingMetadata.from_requests(reqs, logits.shape[1], logits.device))


def test_greedy_and_logprobs_match_cpu():
    logits = torch.randn(16, 32000) * 4
    params = SamplingParams(temperature=0, logprobs=5, repetition_penalty=1.3, frequency_penalty=0.5,
                            logit_bias={17: 3.0}, min_tokens=4)
    reqs = [make_request(params, i % 6) for i in range(16)]
    cpu, gpu = run(logits, reqs), run(logits.to(CUDA), reqs)
    assert torch.equal(cpu.sampled_token_ids, gpu.sampled_token_ids.cpu())
    torch.testing.assert_close(cpu.logprobs, gpu.logprobs.cpu(), rtol=1e-4, atol=1e-4)


def test_seeded_rows_same_in_any_batch_on_cuda():
    vocab = 32000
    row = torch.randn(vocab, device=CUDA)
    seeded = SamplingParams(temperature=0.8, top_p=0.9, top_k=100, seed=99)
    for step in range(3):
        got = []
        for num_others, index in ((0, 0), (5, 2), (40, 40)):
            logits = torch.randn(num_others + 1, vocab, device=CUDA)
            logits[index] = row
            reqs = [make_request(SamplingParams(min_p=0.05)) for _ in range(num_others + 1)]
            reqs[index] = make_request(seeded, step)
            got.append(run(logits, reqs).sampled_token_ids[index].item())
        assert len(set(got)) == 1


def test_top_k_top_p_support_on_cuda():
    vocab, draws = 1000, 4000
    row = torch.randn(vocab, device=CUDA) * 3
    params = SamplingParams(temperature=0.9, top_k=20, top_p=0.8)
    out = run(row.expand(draws, vocab).contiguous(), [make_request(params) for _ in range(draws)])
    allowed = set(row.topk(20).indices.tolist())
    assert set(out.sampled_token_ids.tolist()) <= allowed
