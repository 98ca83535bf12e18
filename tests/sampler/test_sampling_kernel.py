"""Triton Gumbel-race sampling kernel (engine/sampling_kernel.py) and the Sampler's kernel path.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors: TRITON_INTERPRET must be set
before the kernels are defined; engine.sampling_kernel is imported lazily, so setting it here, before
the first use, is enough. The interpreter runs one program at a time (~10 ms each), so batches stay small.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from engine.request import Request  # noqa: E402
from engine.sampler import Sampler, row_keys, seed_for_step  # noqa: E402
from engine.sampling_metadata import SamplingMetadata  # noqa: E402
from engine.sampling_params import SamplingParams  # noqa: E402

DEVICE = torch.device("cuda" if torch.cuda.is_available() else "cpu")
NEG_INF = float("-inf")


def kernel():
    from engine.sampling_kernel import gumbel_sample
    return gumbel_sample


def keys_for(num_rows: int, seed: int) -> torch.Tensor:
    return torch.randint(1 << 62, (num_rows,), generator=torch.Generator().manual_seed(seed)).to(DEVICE)


def make_request(params: SamplingParams, num_output_tokens: int = 0) -> Request:
    req = Request("r", [1, 2, 3], params, eos_token_ids=(0,))
    for t in range(num_output_tokens):
        req.append_output_token(t % 7)
    return req


def sample(logits: torch.Tensor, reqs: list[Request]) -> torch.Tensor:
    meta = SamplingMetadata.from_requests(reqs, logits.shape[1], logits.device)
    return Sampler(use_kernel=True)(logits, meta).sampled_token_ids.cpu()


@pytest.mark.parametrize("chunk_size", [1024, None])
def test_tokens_inside_allowed_set(chunk_size):
    """Random masks over V=5000 (several chunks): every token is a finite logit, for any temperature."""
    gen = torch.Generator().manual_seed(0)
    num_rows, vocab = 8, 5000
    logits = torch.randn(num_rows, vocab, generator=gen) * 3
    logits[torch.rand(num_rows, vocab, generator=gen) > 0.03] = NEG_INF
    temperature = torch.tensor([0.05, 0.5, 1.0, 2.0, 5.0, 1.0, 0.3, 10.0])
    out = kernel()(logits.to(DEVICE), keys_for(num_rows, 1), temperature.to(DEVICE), chunk_size=chunk_size).cpu()
    assert out.dtype == torch.int64 and out.shape == (num_rows,)
    assert torch.isfinite(logits[torch.arange(num_rows), out]).all()


def _chi_square_p(tokens: np.ndarray, probs: np.ndarray) -> float:
    """p-value of the draws against probs, bins with expected count < 5 merged into one."""
    counts = np.bincount(tokens, minlength=len(probs)).astype(np.float64)
    expected = probs * len(tokens)
    big = expected >= 5
    assert counts[probs == 0].sum() == 0, "drew a token of probability 0"
    obs = np.append(counts[big], counts[~big].sum())
    exp = np.append(expected[big], expected[~big].sum())
    if exp[-1] == 0:
        obs, exp = obs[:-1], exp[:-1]
    statistic = float(((obs - exp) ** 2 / exp).sum())
    dof = len(obs) - 1                       # chi-square survival function = upper regularized gamma
    return float(torch.special.gammaincc(torch.tensor(dof / 2, dtype=torch.float64),
                                         torch.tensor(statistic / 2, dtype=torch.float64)))


@pytest.mark.parametrize("temperature, min_p", [(1.0, None), (0.6, 0.08)])
def test_distribution_matches_softmax(temperature, min_p):
    """1500 rows of the same logits, each with its own key, vs float64 softmax(logits / T) (min-p applied)."""
    gen = torch.Generator().manual_seed(3)
    draws, vocab = 1500, 1000
    row = torch.full((vocab,), -6.0)
    row[torch.randperm(vocab, generator=gen)[:40]] = torch.randn(40, generator=gen) * 1.5
    probs = torch.softmax(row.double() / temperature, dim=0).numpy()
    if min_p is not None:
        probs = np.where(probs >= min_p * probs.max(), probs, 0.0)
        probs /= probs.sum()
    logits = row.expand(draws, vocab).contiguous().to(DEVICE)
    temp = torch.full((draws,), temperature, device=DEVICE)
    mp = None if min_p is None else torch.full((draws,), min_p, device=DEVICE)
    out = kernel()(logits, keys_for(draws, 4), temp, mp).cpu().numpy()
    assert _chi_square_p(out, probs) > 1e-3


def test_same_key_same_token_at_any_row_and_chunking():
    gen = torch.Generator().manual_seed(5)
    vocab = 5000
    row = torch.randn(vocab, generator=gen) * 0.1                # flat: another draw would likely differ
    key = 0x1234_5678_9ABC_DEF
    got = set()
    for num_rows, index, chunk_size in ((1, 0, None), (5, 3, 1024), (8, 7, 2048)):
        logits = torch.randn(num_rows, vocab, generator=gen)
        logits[index] = row
        keys = keys_for(num_rows, num_rows)
        keys[index] = key
        got.add(kernel()(logits.to(DEVICE), keys, chunk_size=chunk_size)[index].item())
    assert len(got) == 1


def test_single_finite_logit_always_picked():
    """Rows where all but one column are -inf (first, middle, last column, other chunks) pick it."""
    num_rows, vocab = 8, 5000
    logits = torch.full((num_rows, vocab), NEG_INF)
    winners = torch.tensor([0, 1023, 1024, 2500, 4095, 4096, 4999, 17])
    logits[torch.arange(num_rows), winners] = torch.tensor([-80.0, 0.0, 30.0, -1.0, 5.0, 1e4, 2.0, -1e4])
    temperature = torch.tensor([0.01, 1.0, 3.0, 0.5, 100.0, 1.0, 0.1, 2.0]).to(DEVICE)
    for seed in range(2):
        out = kernel()(logits.to(DEVICE), keys_for(num_rows, seed), temperature, chunk_size=1024).cpu()
        assert torch.equal(out, winners)


def test_greedy_rows_take_argmax_lowest_on_ties():
    gen = torch.Generator().manual_seed(6)
    num_rows, vocab = 6, 5000
    logits = torch.randn(num_rows, vocab, generator=gen)
    logits[0, [3000, 200, 4500]] = 9.0                           # ties across chunks: lowest index wins
    logits[1, [700, 701]] = 9.0                                  # ties inside a tile
    greedy = torch.tensor([True, True, False, True, False, True])
    out = kernel()(logits.to(DEVICE), keys_for(num_rows, 7), torch.full((num_rows,), 0.7, device=DEVICE),
                   greedy=greedy.to(DEVICE), chunk_size=1024).cpu()
    argmax = logits.argmax(dim=-1)
    assert out[0] == 200 and out[1] == 700
    assert torch.equal(out[greedy], argmax[greedy])


@pytest.mark.skipif(not torch.cuda.is_available(), reason="lg2.approx is CUDA only (the interpreter has no libdevice)")
def test_fast_logs_draw_the_tokens_of_exact_logs():
    """The default on CUDA (lg2.approx) ranks the same Gumbel scores as exact log2, up to rounding: the
    winners' noise comes from U near 1, where a plain lg2.approx of U was off by up to 86% (1-2% of
    these rows drew another token before the series took over there)."""
    gen = torch.Generator().manual_seed(8)
    num_rows, vocab = 512, 151936
    logits = (torch.randn(num_rows, vocab, generator=gen) * 3).to(DEVICE)
    keys, temperature = keys_for(num_rows, 9), torch.full((num_rows,), 0.6, device=DEVICE)
    fast = kernel()(logits, keys, temperature)
    exact = kernel()(logits, keys, temperature, fast_log=False)
    assert (fast != exact).sum().item() <= 1


def test_row_keys_use_seed_for_step():
    reqs = [make_request(SamplingParams(temperature=1.0)) for _ in range(4)]
    reqs[2] = make_request(SamplingParams(temperature=0.8, seed=77), num_output_tokens=3)
    meta = SamplingMetadata.from_requests(reqs, 100, DEVICE)
    keys = row_keys(meta, DEVICE).cpu()
    assert keys[2].item() == seed_for_step(77, 3)
    assert len(set(keys.tolist())) == 4 and (keys >= 0).all()


def _seeded_token(row: torch.Tensor, num_others: int, index: int, seed: int, step: int) -> int:
    vocab = row.shape[0]
    logits = torch.randn(num_others + 1, vocab) * 2
    logits[index] = row
    reqs = [make_request(SamplingParams(temperature=1.0, min_p=0.05)) for _ in range(num_others + 1)]
    reqs[index] = make_request(SamplingParams(temperature=0.9, top_p=0.95, seed=seed), step)
    return sample(logits.to(DEVICE), reqs)[index].item()


def test_sampler_seeded_rows_reproducible_and_seeds_differ():
    vocab = 1000
    row = torch.randn(vocab, generator=torch.Generator().manual_seed(8)) * 0.1
    for step in range(2):
        assert len({_seeded_token(row, n, i, 1234, step) for n, i in ((0, 0), (3, 1), (7, 7))}) == 1
    by_seed = [tuple(_seeded_token(row, 1, 0, s, t) for t in range(3)) for s in (1, 2, 3)]
    assert len(set(by_seed)) == 3
    assert len(set(by_seed[0])) > 1                              # the step changes the noise


def test_sampler_kernel_path_filters_and_greedy_rows():
    """Through Sampler(use_kernel=True): top-k + top-p support, min-p support, greedy rows exact argmax."""
    gen = torch.Generator().manual_seed(9)
    vocab, reps = 1000, 16
    rows = torch.randn(3, vocab, generator=gen) * 3
    settings = [SamplingParams(temperature=0.9, top_k=20, top_p=0.8), SamplingParams(min_p=0.2),
                SamplingParams(temperature=0)]
    logits = rows.repeat(reps, 1)
    out = sample(logits.to(DEVICE), [make_request(settings[i % 3]) for i in range(len(logits))]).view(reps, 3)
    assert set(out[:, 0].tolist()) <= set(rows[0].topk(20).indices.tolist())
    probs = rows[1].softmax(-1)
    assert set(out[:, 1].tolist()) <= set(torch.nonzero(probs >= 0.2 * probs.max()).flatten().tolist())
    assert (out[:, 2] == rows[2].argmax()).all()


def test_cpu_default_is_torch_path():
    assert not Sampler()._kernel_for(torch.zeros(1, 4))
    assert Sampler(use_kernel=True)._kernel_for(torch.zeros(1, 4))


def test_warm_up_compiles_every_chunk_size_batches_use(monkeypatch):
    """warm_up runs the kernel once for each chunk size of batches 1..max rows (here 1024 and 2048
    columns for a 3000-token vocabulary and up to 600 rows); without the kernel it does nothing."""
    from engine import sampling_kernel

    calls = []
    original = sampling_kernel.gumbel_sample
    monkeypatch.setattr(sampling_kernel, "gumbel_sample", lambda logits, *a, **k: calls.append(logits.shape)
                        or original(logits, *a, **k))
    chunks = Sampler(use_kernel=True).warm_up(600, 3000, DEVICE)
    expected = sorted({sampling_kernel.chunk_size_for(n, 3000) for n in range(1, 601)})
    assert chunks == expected == [1024, 2048]
    assert sorted({shape[0] for shape in calls}) == [1, 512] and len(calls) == 4
    assert Sampler(use_kernel=False).warm_up(600, 3000, DEVICE) == []


def test_sampler_reads_bfloat16_logits_as_their_float32_values(monkeypatch):
    """The LM head hands over bfloat16 logits: seeded random rows (kernel) and all-greedy batches read
    them without a float32 copy, penalized rows take one; tokens equal those of the float32 values."""
    gen = torch.Generator().manual_seed(11)
    logits = (torch.randn(4, 1000, generator=gen) * 2).to(torch.bfloat16).to(DEVICE)
    upcasts = []
    original = torch.Tensor.float
    monkeypatch.setattr(torch.Tensor, "float", lambda t: upcasts.append(t.dtype) or original(t))
    cases = [[SamplingParams(temperature=0.8, seed=s) for s in range(4)],
             [SamplingParams(temperature=0)] * 4,
             [SamplingParams(temperature=0.8, seed=s, repetition_penalty=1.3) for s in range(4)]]
    for params, upcast in zip(cases, (False, False, True)):
        reqs = [make_request(p, num_output_tokens=2) for p in params]
        upcasts.clear()
        got = sample(logits, reqs)
        assert (torch.bfloat16 in upcasts) == upcast
        assert torch.equal(got, sample(logits.float(), reqs))


def test_sampler_kernel_path_applies_min_p_before_top_p():
    """vLLM V1's order on the kernel path: probs [.5, .3, .12, .08], min_p .2 then top_p .85 -> tokens 0
    and 1 at [.625, .375] (top-p first, the old order, drew token 2 at .130: ~39 of these 300 rows)."""
    draws = 300
    probs = torch.tensor([0.5, 0.3, 0.12, 0.08], dtype=torch.float64)
    logits = probs.log().float().expand(draws, 4).contiguous().to(DEVICE)
    reqs = [make_request(SamplingParams(temperature=1.0, top_p=0.85, min_p=0.2)) for _ in range(draws)]
    torch.manual_seed(13)
    out = sample(logits, reqs).numpy()
    assert _chi_square_p(out, np.array([0.625, 0.375, 0.0, 0.0])) > 1e-3


def test_kernel_gets_min_p_only_without_top_k_top_p(monkeypatch):
    """Without top-k / top-p the kernel applies min-p itself (the fast path, same result); with them,
    min-p runs in torch before top-k / top-p and the kernel gets min_p None."""
    from engine import sampling_kernel

    seen = []
    original = sampling_kernel.gumbel_sample
    monkeypatch.setattr(sampling_kernel, "gumbel_sample", lambda logits, keys, temperature, min_p, *a:
                        seen.append(min_p) or original(logits, keys, temperature, min_p, *a))
    logits = torch.randn(2, 64, generator=torch.Generator().manual_seed(14)).to(DEVICE)
    sample(logits, [make_request(SamplingParams(min_p=0.2)), make_request(SamplingParams())])
    sample(logits, [make_request(SamplingParams(min_p=0.2)), make_request(SamplingParams(top_p=0.9))])
    assert seen[0] is not None and seen[0].tolist() == pytest.approx([0.2, 0.0]) and seen[1] is None
