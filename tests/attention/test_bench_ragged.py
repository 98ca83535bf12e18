"""`python -m engine.bench attention --ragged --splits ...`: the ragged inputs and the forced split
counts, on the CPU (torch_ref, and the triton kernels through the interpreter: see conftest.py)."""
import argparse
from dataclasses import replace

import pytest
import torch

from attention.backends.torch_ref import TorchRefBackend
from attention.selector import load_backend
from engine.bench import attention as bench
from engine.bench import ragged

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"   # the triton kernels need CUDA tensors on a GPU
SHAPE = dict(num_heads=4, num_kv_heads=2, head_size=32, dtype=torch.float32, kv_cache_dtype=None)


def dense_attention_f64(query: torch.Tensor, kv: torch.Tensor, lens) -> torch.Tensor:
    """Request r's one query token [H, D] over the first lens[r] tokens of kv [2, batch, S, Hkv, D]."""
    group = SHAPE["num_heads"] // SHAPE["num_kv_heads"]
    out = []
    for r, n in enumerate(lens):
        k, v = (kv[i, r, :n].cpu().double().repeat_interleave(group, dim=1).transpose(0, 1) for i in (0, 1))
        scores = (k @ query[r].cpu().double()[:, :, None])[..., 0] / SHAPE["head_size"] ** 0.5   # [H, n]
        out.append((torch.softmax(scores, -1)[:, None, :] @ v)[:, 0])
    return torch.stack(out)


def ragged_inputs(monkeypatch, block_size: int, lens=(37, 5, 64, 16)):
    monkeypatch.setattr(bench, "DEVICE", DEVICE)
    case = bench.Case("decode", len(lens), 64, tuple(lens), "drawn")
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    kv = bench.logical_kv(case, SHAPE, gen)
    inputs = bench.paged_inputs(case, kv, block_size, SHAPE, gen)
    return case, kv, inputs, dense_attention_f64(inputs.query, kv, lens)


def test_ragged_lens_are_seeded_in_range_and_ordered():
    lens = ragged.ragged_lens(256, 2048)
    assert lens == ragged.ragged_lens(256, 2048) and min(lens) >= 256 and max(lens) <= 2048
    assert len(set(lens)) > 100   # not all equal
    assert ragged.ragged_lens(256, 2048, "longest-first") == tuple(sorted(lens, reverse=True))
    assert ragged.ragged_lens(256, 2048, "shortest-first") == tuple(sorted(lens))
    with pytest.raises(ValueError, match="order must be one of"):
        ragged.ragged_lens(4, 64, "random")


@pytest.mark.parametrize("block_size", [16, 32])
def test_ragged_paged_inputs_match_dense_attention(monkeypatch, block_size):
    case, kv, inputs, expected = ragged_inputs(monkeypatch, block_size)
    common = inputs.common
    assert common.seq_lens_cpu.tolist() == list(case.lens) and common.max_seq_len == 64
    # the step's K/V are each request's last token, and its slot is where that token lives
    last = torch.tensor(case.lens) - 1
    assert torch.equal(inputs.key, kv[0, torch.arange(case.batch), last])
    assert torch.equal(inputs.value, kv[1, torch.arange(case.batch), last])
    flat = inputs.kv_cache.view(2, -1, SHAPE["num_kv_heads"], SHAPE["head_size"])
    assert torch.equal(flat[0, common.slot_mapping], inputs.key)
    # only the requests' own tokens hold values: everything else (tails, spare block) is NaN
    assert int((~flat[0].isnan()).all(-1).all(-1).sum()) == sum(case.lens)
    runner = bench.Runner(TorchRefBackend, inputs, SHAPE)
    runner.step()
    assert torch.allclose(runner.output.cpu().double(), expected, atol=1e-5, rtol=1e-5)
    # a backend that reads one token past each request's length is refused (NaN: infinite error)
    past = replace(inputs, common=replace(common, seq_lens_cpu=common.seq_lens_cpu + 1))
    overread = bench.Runner(TorchRefBackend, past, SHAPE)
    overread.step()
    assert bench.relative_error(overread.output, runner.output) == float("inf")


@pytest.mark.parametrize("splits", [1, 3])
def test_triton_decode_at_forced_splits_matches_dense(monkeypatch, splits):
    """The forced split count reaches the kernel (and is restored after); the NaN padding is never read."""
    _, _, inputs, expected = ragged_inputs(monkeypatch, 16)
    backend = load_backend("triton")
    policy = backend.get_builder_cls().num_splits
    with ragged.forced_splits(splits):
        runner = bench.Runner(backend, inputs, SHAPE)
    assert runner.metadata.num_splits == splits and backend.get_builder_cls().num_splits is policy
    runner.step()
    assert torch.allclose(runner.output.cpu().double(), expected, atol=1e-4, rtol=1e-4)


def test_case_selection_and_bytes():
    parser = argparse.ArgumentParser()
    bench.add_args(parser)
    args = parser.parse_args(["--cases", "decode", "--decode-cases", "256x2048,64x2048", "--ragged",
                              "--orders", "drawn", "longest-first", "--splits", "1", "2", "8"])
    cases = bench.select_cases(args.cases, ragged.parse_cases(args.decode_cases), args.ragged, args.orders)
    assert [c.name for c in cases] == ["decode 256x2048 ragged drawn", "decode 256x2048 ragged longest-first",
                                       "decode 64x2048 ragged drawn", "decode 64x2048 ragged longest-first"]
    assert cases[0].seq_lens == list(ragged.ragged_lens(256, 2048)) and args.splits == [1, 2, 8]
    uniform = bench.select_cases("decode:256x1024")
    assert [(c.name, c.seq_lens) for c in uniform] == [("decode 256x1024", [1024] * 256)]
    assert ragged.kv_read_bytes([100, 300], 8, 128, 2) == 400 * 8 * 128 * 2 * 2
    rows = [dict(case="c", backend="triton", splits=n, time_us=t, tb_per_s=1.0) for n, t in ((1, 9.0), (2, 7.0))]
    assert ragged.split_summary(rows) == ["c triton: best splits 2 (7.0 us, 1.00 TB/s); us by splits 1: 9.0, 2: 7.0"]
