"""SamplingParams.allowed_token_ids in the Sampler: rows that use it sample only their allowed tokens (greedy
and random, torch path and kernel path), their logprobs are the raw logits' (vLLM's raw_logprobs: taken before
the mask), and the other rows of the batch sample exactly what they sample without those rows' mask.

Without a GPU the kernel path runs in Triton's interpreter (see test_sampling_kernel.py)."""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from engine.request import Request  # noqa: E402
from engine.sampler import Sampler  # noqa: E402
from engine.sampling_metadata import SamplingMetadata  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
VOCAB = 64
ALLOWED = [3, 17, 40, 63]


def make_request(params: SamplingParams) -> Request:
    return Request("r", [1, 2, 3], params, eos_token_ids=(0,))


def batch_params(allowed: list[int] | None) -> list[SamplingParams]:
    """Rows 0-3 use `allowed` (greedy, seeded temperature 1, top-k, unseeded); rows 4-7 never do."""
    return [SamplingParams(temperature=0, allowed_token_ids=allowed),
            SamplingParams(temperature=1.0, seed=7, allowed_token_ids=allowed),
            SamplingParams(temperature=1.0, seed=8, top_k=30, allowed_token_ids=allowed),
            SamplingParams(temperature=1.0, allowed_token_ids=allowed),
            SamplingParams(temperature=0),
            SamplingParams(temperature=1.0, seed=9),
            SamplingParams(temperature=0.7, seed=10, top_p=0.9),
            SamplingParams(temperature=1.0, seed=11, logprobs=2)]


def sample(logits: torch.Tensor, params: list[SamplingParams], use_kernel: bool):
    meta = SamplingMetadata.from_requests([make_request(p) for p in params], VOCAB, DEVICE)
    return Sampler(use_kernel=use_kernel)(logits, meta)


@pytest.mark.parametrize("use_kernel", [False, True])
def test_rows_sample_only_allowed_tokens_and_other_rows_are_unchanged(use_kernel):
    gen = torch.Generator().manual_seed(0)
    for trial in range(4 if use_kernel else 20):
        logits = (torch.randn(8, VOCAB, generator=gen) * 3).to(DEVICE)
        logits[:4, 0] = 50.0                          # the best token overall is not allowed
        with_mask = sample(logits, batch_params(ALLOWED), use_kernel).sampled_token_ids.cpu()
        without = sample(logits, batch_params(None), use_kernel).sampled_token_ids.cpu()
        assert all(t in ALLOWED for t in with_mask[:4].tolist()), (trial, with_mask)
        assert with_mask[0] == max(ALLOWED, key=lambda t: logits[0, t].item())
        assert torch.equal(with_mask[4:], without[4:])
        assert without[0] == 0


def test_random_row_draws_every_allowed_token_and_no_other():
    logits = torch.zeros(400, VOCAB, device=DEVICE)
    params = [SamplingParams(temperature=1.0, seed=i, allowed_token_ids=ALLOWED) for i in range(400)]
    drawn = sample(logits, params, use_kernel=False).sampled_token_ids.cpu().tolist()
    assert set(drawn) == set(ALLOWED)


@pytest.mark.parametrize("use_kernel", [False, True])
def test_logprobs_are_raw_taken_before_the_mask(use_kernel):
    """The sampled (allowed) token's logprob and the top 3 are log_softmax of the raw logits (float64
    reference), the disallowed best tokens included."""
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(1)).to(DEVICE)
    logits[:, 0] = 6.0                                  # the best token is not allowed
    params = [SamplingParams(temperature=0, logprobs=3, allowed_token_ids=ALLOWED),
              SamplingParams(temperature=1.0, seed=2, logprobs=3, allowed_token_ids=ALLOWED)]
    out = sample(logits, params, use_kernel)
    ids, logprobs = out.logprob_token_ids.cpu(), out.logprobs.cpu()
    raw = torch.log_softmax(logits.double().cpu(), dim=-1)
    assert ids[0, 0] == max(ALLOWED, key=lambda t: logits[0, t].item()) and ids[1, 0].item() in ALLOWED
    assert torch.equal(ids[:, 1:], raw.topk(3, dim=-1).indices) and (ids[:, 1] == 0).all()
    torch.testing.assert_close(logprobs, raw.gather(1, ids).float(), rtol=1e-5, atol=1e-5)
    ranks = (raw >= raw.gather(1, ids[:, :1])).sum(dim=-1)         # the disallowed best tokens counted
    assert torch.equal(out.logprob_ranks.cpu(), ranks) and (ranks > 1).all()


def test_metadata_only_for_rows_that_use_it():
    plain = SamplingMetadata.from_requests([make_request(SamplingParams())] * 3, VOCAB, DEVICE)
    assert plain.no_allowed_token_ids and plain.no_logit_processors and plain.reusable
    reqs = [make_request(SamplingParams()), make_request(SamplingParams(allowed_token_ids=[5, 2]))]
    meta = SamplingMetadata.from_requests(reqs, VOCAB, DEVICE)
    assert meta.allowed_rows.tolist() == [1]
    assert meta.allowed_flat_ids.tolist() == [VOCAB + 5, VOCAB + 2]
    assert not meta.no_logit_processors and not meta.reusable


def test_out_of_vocab_id_is_rejected_by_the_metadata():
    with pytest.raises(ValueError, match="token ids must be in"):
        SamplingMetadata.from_requests([make_request(SamplingParams(allowed_token_ids=[VOCAB]))], VOCAB, DEVICE)
