"""An fp8 (float8_e4m3fn, scale 1.0) KV cache: torch_ref against a float64 reference, triton against
torch_ref, and the Triton store's rounding.

Without a GPU the Triton kernels run in Triton's interpreter (conftest.py). The interpreter reads
fp8 correctly but rounds float -> fp8 wrongly (triton 3.9: no carry into the exponent, ties away
from zero), so on the CPU the new K/V these tests store are first snapped onto the fp8 grid (then
any correct cast is exact) and the rounding of the Triton store is tested on CUDA only.
"""
import math

import pytest
import torch

from attention.backends.torch_ref import TorchRefBackend, gather_kv
from attention.backends.triton_attn import TritonAttnBackend
from attention_batches import assert_matches_reference, make_batch, run_backend

FP8 = torch.float8_e4m3fn
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
ON_CPU = DEVICE == "cpu"
# e4m3 keeps 3 mantissa bits: a cast is off by at most 2^-4 relative (normal values), ~3.6% RMS.
FP8_TOLERANCE = 2 ** -4
MIXED = ([1, 19, 1, 6, 33], [40, 0, 17, 29, 21])   # decodes, a fresh prefill, chunked prefills


def attention_f64(batch, keys_values) -> torch.Tensor:
    """Causal attention in float64 per request; keys_values(r, seq_len) -> ([S, Hkv, D], [S, Hkv, D])."""
    common = batch.common
    starts, seq_lens = common.query_start_loc_cpu.tolist(), common.seq_lens_cpu.tolist()
    num_heads, head_size = batch.query.shape[1:]
    out = torch.zeros(batch.num_valid_tokens, num_heads, head_size, dtype=torch.float64)
    for r in range(common.num_reqs):
        q = batch.query[starts[r]:starts[r + 1]].cpu().double()
        k, v = keys_values(r, seq_lens[r])
        group = num_heads // k.shape[1]
        k, v = (t.double().repeat_interleave(group, dim=1).transpose(0, 1) for t in (k, v))   # [H, S, D]
        scores = q.transpose(0, 1) @ k.transpose(1, 2) / math.sqrt(head_size)              # [H, Q, S]
        q_pos = torch.arange(seq_lens[r] - q.shape[0], seq_lens[r])[:, None]
        scores.masked_fill_(torch.arange(seq_lens[r])[None, :] > q_pos, float("-inf"))
        out[starts[r]:starts[r + 1]] = (torch.softmax(scores, -1) @ v).transpose(0, 1)
    return out


def logical_kv(batch, cache: torch.Tensor, key: torch.Tensor, value: torch.Tensor):
    """keys_values for attention_f64: the context from `cache`, then this step's key/value."""
    common = batch.common
    starts = common.query_start_loc_cpu.tolist()
    block_size = cache.shape[2]

    def keys_values(r, seq_len):
        q_len = starts[r + 1] - starts[r]
        blocks = common.block_table[r, :-(-seq_len // block_size)].cpu().long()
        k, v = gather_kv(cache.cpu(), blocks, seq_len - q_len)
        return (torch.cat([k.double(), key[starts[r]:starts[r + 1]].cpu().double()]),
                torch.cat([v.double(), value[starts[r]:starts[r + 1]].cpu().double()]))
    return keys_values


def rel_err(got: torch.Tensor, want: torch.Tensor) -> float:
    got, want = got.cpu().double(), want.cpu().double()
    assert torch.isfinite(got).all()
    return ((got - want).norm() / want.norm()).item()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_torch_ref_fp8_against_float64(dtype):
    """Within fp8 rounding of exact attention on the unrounded K/V, and equal (up to torch_ref's
    float32 math) to exact attention on the K/V rounded to fp8: the cache holds torch's fp8 cast."""
    batch = make_batch(*MIXED, num_heads=8, num_kv_heads=2, head_size=64, block_size=16, dtype=dtype,
                       device=DEVICE, num_pad_tokens=2, seed=3, kv_cache_dtype=FP8)
    out, cache = run_backend(TorchRefBackend, batch)
    assert cache.dtype == FP8
    out = out[:batch.num_valid_tokens]
    exact = attention_f64(batch, logical_kv(batch, batch.exact_cache, batch.key, batch.value))
    rounded = attention_f64(batch, logical_kv(batch, batch.kv_cache, batch.key.to(FP8), batch.value.to(FP8)))
    err_exact, err_rounded = rel_err(out, exact), rel_err(out, rounded)
    # the output itself is rounded to `dtype` at the end: bf16's 2^-9 relative
    assert err_rounded < (4e-3 if dtype == torch.bfloat16 else 1e-5), f"vs fp8-rounded K/V: {err_rounded:.2e}"
    assert err_exact < FP8_TOLERANCE, f"vs exact K/V: {err_exact:.2e}"
    assert err_exact > 10 * err_rounded, "the cache is not fp8: no rounding error at all"


@pytest.mark.parametrize("group,head_size,block_size,dtype", [
    (1, 64, 16, torch.float32),
    (4, 128, 16, torch.bfloat16),
    (3, 64, 32, torch.float16),
])
def test_triton_mixed_batch_fp8_matches_torch_ref(group, head_size, block_size, dtype):
    """Store, then prefill/extend over an fp8 cache: output as close to torch_ref as with a cache
    in `dtype` (both read the same fp8 values), and the same cache bytes."""
    batch = make_batch(*MIXED, num_heads=2 * group, num_kv_heads=2, head_size=head_size, block_size=block_size,
                       dtype=dtype, device=DEVICE, num_pad_tokens=3, seed=group, kv_cache_dtype=FP8,
                       snap_kv=ON_CPU)
    assert_matches_reference(TritonAttnBackend, batch)


def test_triton_fp8_output_is_close_to_exact_attention():
    """Not just equal to torch_ref: within fp8 rounding of float64 attention on the unrounded K/V."""
    batch = make_batch([1, 12, 1], [60, 9, 33], num_heads=8, num_kv_heads=2, head_size=64, block_size=16,
                       dtype=torch.bfloat16, device=DEVICE, seed=7, kv_cache_dtype=FP8)
    if ON_CPU:  # the store would round in the interpreter: keep exact K/V out of it, compare the reads
        batch.key, batch.value = batch.key.to(FP8).to(batch.key.dtype), batch.value.to(FP8).to(batch.key.dtype)
    out, _ = run_backend(TritonAttnBackend, batch)
    exact = attention_f64(batch, logical_kv(batch, batch.exact_cache, batch.key, batch.value))
    assert rel_err(out[:batch.num_valid_tokens], exact) < FP8_TOLERANCE


def test_store_kv_fp8_exact_values_every_device():
    """Values already on the fp8 grid are stored bit-exactly (the interpreter's cast is exact on
    them), through the slot mapping, padding skipped."""
    from attention.backends.torch_ref import store_kv as ref_store_kv
    from attention.ops.store_kv import store_kv
    gen = torch.Generator().manual_seed(5)
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        cache = torch.full((2, 4, 16, 2, 64), 7.0).to(FP8)
        key, value = (torch.randn(2, 6, 2, 64, generator=gen) * 40).to(FP8).to(dtype)
        slots = torch.tensor([3, -1, 60, 17, -1, 33])
        want = cache.clone()
        ref_store_kv(key, value, want, slots)
        got = cache.to(DEVICE)
        store_kv(key.to(DEVICE), value.to(DEVICE), got, slots.to(DEVICE))
        assert torch.equal(got.cpu().view(torch.uint8), want.view(torch.uint8)), dtype


@pytest.mark.skipif(ON_CPU, reason="Triton's CPU interpreter rounds float -> fp8 wrongly; the GPU's cast is tested")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_store_kv_fp8_rounds_like_torch(dtype):
    """On the GPU the Triton store rounds to nearest like torch's cast, over e4m3's whole range
    (subnormals to 448), and values beyond +-448 saturate to +-448 (no NaN)."""
    from attention.backends.torch_ref import store_kv as ref_store_kv
    from attention.ops.store_kv import store_kv
    gen = torch.Generator().manual_seed(0)
    magnitude = torch.logspace(-4, math.log10(440), 256)
    key, value = ((torch.randn(2, 256, 1, 64, generator=gen).sign() * magnitude[:, None, None]
                   * (1 + 0.01 * torch.rand(2, 256, 1, 64, generator=gen))).to(dtype))   # up to 444
    cache = torch.zeros(2, 16, 16, 1, 64, dtype=FP8)
    slots = torch.randperm(256, generator=gen)
    want = cache.clone()
    ref_store_kv(key, value, want, slots)
    got = cache.cuda()
    store_kv(key.cuda(), value.cuda(), got, slots.cuda())
    assert torch.equal(got.cpu().view(torch.uint8), want.view(torch.uint8))
    big = torch.tensor([500.0, -1000.0, 3e4, -448.0]).repeat(16).view(4, 1, 16).to(dtype)
    out = torch.zeros(2, 1, 16, 1, 16, dtype=FP8, device="cuda")
    store_kv(big.cuda(), big.cuda(), out, torch.arange(4, device="cuda"))
    stored = out[0, 0, :4, 0].float().cpu()
    assert torch.equal(stored, big[:, 0].float().sign() * 448), stored
