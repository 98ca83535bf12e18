"""SamplingMetadata.from_requests: fast-path flags, per-row tensors, seeds, counts, build time (CPU)."""
from __future__ import annotations

import time

import pytest
import torch

from engine.request import Request
from engine.sampling_metadata import SamplingMetadata
from engine.sampling_params import SamplingParams

CPU = torch.device("cpu")


def make_request(params: SamplingParams, output: list[int] = (), prompt: list[int] = (1, 2)) -> Request:
    req = Request("r", list(prompt), params, eos_token_ids=(0,))
    for t in output:
        req.append_output_token(t)
    return req


def test_plain_batch_uses_every_fast_path():
    meta = SamplingMetadata.from_requests([make_request(SamplingParams()) for _ in range(5)], 100, CPU)
    assert meta.all_random and not meta.all_greedy and meta.greedy_mask is None
    assert meta.top_k is None and meta.top_p is None and meta.min_p is None
    assert meta.no_penalties and meta.output_token_counts is None
    assert meta.max_num_logprobs is None and meta.seeds == []
    torch.testing.assert_close(meta.temperature, torch.ones(5))


def test_per_row_values_and_flags():
    params = [SamplingParams(temperature=0, top_k=5, seed=3), SamplingParams(temperature=0.5, top_k=7),
              SamplingParams(top_k=-1, top_p=0.9, seed=11, logprobs=3), SamplingParams(min_p=0.2, logprobs=1)]
    reqs = [make_request(p, output=[4] * i) for i, p in enumerate(params)]
    meta = SamplingMetadata.from_requests(reqs, 50, CPU)
    assert not meta.all_greedy and not meta.all_random
    assert meta.greedy_mask.tolist() == [True, False, False, False]
    torch.testing.assert_close(meta.temperature, torch.tensor([1.0, 0.5, 1.0, 1.0]))
    assert meta.top_k.tolist() == [50, 7, 50, 50] and meta.max_top_k == 7
    torch.testing.assert_close(meta.top_p, torch.tensor([1.0, 1.0, 0.9, 1.0]))
    torch.testing.assert_close(meta.min_p, torch.tensor([0.0, 0.0, 0.0, 0.2]))
    assert meta.max_num_logprobs == 3
    assert meta.seeds == [(2, 11, 2)]                   # greedy rows need no seed; step = outputs so far


def test_output_counts_and_prompt_mask():
    reqs = [make_request(SamplingParams(frequency_penalty=0.5), output=[3, 3, 7], prompt=[1, 9]),
            make_request(SamplingParams(), output=[2]),
            make_request(SamplingParams(repetition_penalty=1.2), output=[5], prompt=[6, 6, 8])]
    meta = SamplingMetadata.from_requests(reqs, 10, CPU)
    expected = torch.zeros(3, 10)
    expected[0, 3], expected[0, 7], expected[2, 5] = 2, 1, 1   # row 1 has no penalty: not counted
    assert torch.equal(meta.output_token_counts, expected)
    assert meta.prompt_token_mask[2].nonzero().flatten().tolist() == [6, 8]
    assert not meta.prompt_token_mask[:2].any()


def test_empty_batch_rejected():
    with pytest.raises(ValueError, match="requests"):
        SamplingMetadata.from_requests([], 10, CPU)


def test_plain_batch_of_256_builds_fast():
    reqs = [make_request(SamplingParams(temperature=0.7)) for _ in range(256)]
    for _ in range(5):
        SamplingMetadata.from_requests(reqs, 32000, CPU)
    times = []
    for _ in range(20):
        start = time.perf_counter()
        SamplingMetadata.from_requests(reqs, 32000, CPU)
        times.append(time.perf_counter() - start)
    assert sorted(times)[len(times) // 2] < 2e-3        # ~0.2 ms on a slow CI core; loose for noise


def test_runner_reuses_step_independent_metadata():
    """Same request objects in the same order: the last step's metadata is reused, unless it holds
    anything that depends on the step (a seed here)."""
    from types import SimpleNamespace

    from engine.model_runner import ModelRunner

    runner = SimpleNamespace(_last_sampling=None, device=torch.device("cpu"))
    build = ModelRunner._sampling_metadata.__get__(runner)
    plain = [make_request(SamplingParams(temperature=0.6)) for _ in range(3)]
    first = build(plain, 32)
    assert first.reusable and build(list(plain), 32) is first
    assert build(plain[:2], 32) is not first and build(plain[::-1], 32) is not first
    seeded = plain[:2] + [make_request(SamplingParams(temperature=0.6, seed=5))]
    meta = build(seeded, 32)
    assert not meta.reusable and build(seeded, 32) is not meta
