"""The norm-fused skinny GEMM (models/layers/ops/skinny_norm_gemm.py), its dispatch
(models.layers.ops.norm_linear / norm_linear_silu), the tile-size rule of skinny_gemm.config_for, and a
tiny decoder run through the fused dispatch against the unfused path.

Without a GPU the kernels run in Triton's interpreter on CPU tensors (TRITON_INTERPRET is set before
the kernel modules are first loaded, as in test_skinny_gemm.py).
"""
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from models.layers import ops  # noqa: E402
from models.layers.ops import load  # noqa: E402
from models.loader import build_model  # noqa: E402
from models.presets import get_preset  # noqa: E402
from tests.models.helpers import PagedRunner, max_rel_err, randomize_hf_model  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
EPS = 1e-6
QWEN3_SHAPES = {  # name: (N, K), as in engine/bench/skinny_gemm.py
    "0.6b qkv": (4096, 1024), "0.6b o": (1024, 2048), "0.6b gate_up": (6144, 1024), "0.6b down": (1024, 3072),
    "0.6b lm_head": (151936, 1024), "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (24576, 4096),
    "8b down": (4096, 12288), "8b lm_head": (151936, 4096),
}


def _inputs(num_rows, n, k, dtype, with_residual, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=gen) * scale).to(dtype).to(DEVICE)
    x = randn(num_rows, k, scale=3.0)
    residual = randn(num_rows, k) if with_residual else None
    norm_weight = (1.0 + 0.5 * torch.randn(k, generator=gen)).to(dtype).to(DEVICE)
    weight = randn(n, k, scale=k ** -0.5)
    bias = randn(n) if with_bias else None
    return x, residual, norm_weight, weight, bias


def _unfused(x, residual, norm_weight, weight, bias, silu):
    """The torch path: RMSNorm.forward_native's math, F.linear, SiluAndMul.forward_native's."""
    if residual is None:
        normed, new_residual = ops.rms_norm_native(x, None, norm_weight, EPS), x
    else:
        normed, new_residual = ops.rms_norm_native(x, residual, norm_weight, EPS)
    out = F.linear(normed, weight, bias)
    return (ops.silu_and_mul_native(out) if silu else out), new_residual


def _float64(x, residual, norm_weight, weight, bias, silu):
    h = x.double() + (residual.double() if residual is not None else 0)
    out = (h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + EPS) * norm_weight.double()) @ weight.double().T
    out = out + bias.double() if bias is not None else out
    if silu:
        gate, up = out.chunk(2, dim=-1)
        out = F.silu(gate) * up
    return out


def _close(actual, expected, dtype):
    """float32: tight. bf16: a few roundings (out, and for silu gate / up / silu(gate)) of values ~ 1-10."""
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=3e-2, atol=6e-2)
    torch.testing.assert_close(actual.double(), expected.double().to(actual.device), **tol)


def _run(silu, *args, config=None):
    kernels = load("skinny_norm_gemm")
    return (kernels.norm_gemm_silu if silu else kernels.norm_gemm)(*args[:3], EPS, *args[3:], config=config)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [1, 3, 16])
@pytest.mark.parametrize("with_residual", [False, True])
@pytest.mark.parametrize("with_bias", [False, True])
@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("k", [100, 128])  # the CPU's BLOCK_K is 64: 100 is a ragged last tile
def test_norm_gemm_matches_unfused(num_rows, dtype, with_residual, with_bias, silu, k):
    n = 80 if silu else 72  # I = 40 and N = 72: ragged last column tile
    args = _inputs(num_rows, n, k, dtype, with_residual, with_bias, seed=num_rows * 7 + k + silu)
    before = [t.clone() if t is not None else None for t in args]
    out, new_residual = _run(silu, *args)
    assert out.shape == (num_rows, n // 2 if silu else n) and out.dtype == dtype
    expected, expected_residual = _unfused(*args, silu)
    _close(out, expected, dtype)
    _close(out, _float64(*args, silu), dtype)
    if with_residual:
        exact = not (INTERPRETED and dtype == torch.bfloat16)  # the interpreter truncates to bf16
        torch.testing.assert_close(new_residual, expected_residual, rtol=0 if exact else 2 ** -7, atol=0)
    else:
        assert new_residual is args[0]
    for t, t_before in zip(args, before):
        assert t is None or torch.equal(t, t_before)


@pytest.mark.parametrize("silu", [False, True])
def test_norm_gemm_every_tile_shape(silu):
    """Each BLOCK_N / BLOCK_K config_for can pick, forced, on a ragged N and K with many programs (only
    program 0 writes the new residual)."""
    args = _inputs(5, 300, 520, torch.float32, True, True, seed=11)
    expected, expected_residual = _unfused(*args, silu)
    for block_n in (16, 32, 64):
        for block_k in (64, 128, 256):
            cfg = dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=1)
            out, new_residual = _run(silu, *args, config=cfg)
            _close(out, expected, torch.float32)
            torch.testing.assert_close(new_residual, expected_residual, rtol=0, atol=0)


def test_norm_gemm_rejects_bad_shapes():
    kernels = load("skinny_norm_gemm")
    x, residual, norm_weight, weight, bias = _inputs(2, 8, 32, torch.float32, True, True, seed=1)
    with pytest.raises(ValueError, match="M <= 16"):
        kernels.norm_gemm(torch.zeros(17, 32, device=DEVICE), None, norm_weight, EPS, weight)
    with pytest.raises(ValueError, match="residual.shape"):
        kernels.norm_gemm(x, residual[:1], norm_weight, EPS, weight)
    with pytest.raises(ValueError, match="norm_weight"):
        kernels.norm_gemm(x, residual, norm_weight[:16], EPS, weight)
    with pytest.raises(ValueError, match="bias"):
        kernels.norm_gemm(x, residual, norm_weight, EPS, weight, bias[:4])
    with pytest.raises(ValueError, match="even number of rows"):
        kernels.norm_gemm_silu(x, residual, norm_weight, EPS, weight[:7])


def test_empty_batch_launches_nothing():
    x, residual, norm_weight, weight, _ = _inputs(0, 8, 32, torch.float32, True, False, seed=2)
    out, new_residual = load("skinny_norm_gemm").norm_gemm_silu(x, residual, norm_weight, EPS, weight)
    assert out.shape == (0, 4) and new_residual.shape == (0, 32)


# ---- config_for: enough programs for small weights, the measured 64 x 256 tiles for big ones ----

@pytest.fixture
def no_pdl(monkeypatch):
    """The tile rule without PDL (on a Hopper GPU the tests would otherwise see PDL's rule)."""
    from models.layers.ops import pdl
    monkeypatch.setattr(pdl, "ENABLED", False)


@pytest.mark.parametrize("name", list(QWEN3_SHAPES))
@pytest.mark.parametrize("tiles", [1, 2])
def test_config_programs(no_pdl, name, tiles):
    n, k = QWEN3_SHAPES[name]
    cfg = load("skinny_gemm").config_for(n, k, torch.device("cuda"), 2, num_sms=132, tiles_per_program=tiles)
    programs = -(-n // (cfg["BLOCK_N"] * tiles))
    if name.startswith("8b") or "lm_head" in name:  # >= 32 MB: what the H100 sweep picked
        assert cfg == dict(BLOCK_N=64 // tiles, BLOCK_K=256, num_warps=4, num_stages=4)
    else:  # the 0.6b projections: 16-row tiles (64 programs for N = 1024 where BLOCK_N = 64 gave 16)
        assert cfg["BLOCK_N"] == 16 and cfg["BLOCK_K"] == 256
        assert programs * tiles == {4096: 256, 1024: 64, 6144: 384}[n]


def test_config_with_pdl_keeps_64_rows(monkeypatch):
    """With PDL every weight gets 64-row tiles (measured best there, small weights included)."""
    from models.layers.ops import pdl
    monkeypatch.setattr(pdl, "pdl_enabled", lambda device: device.type == "cuda")
    skinny = load("skinny_gemm")
    monkeypatch.setattr(skinny, "pdl_enabled", pdl.pdl_enabled)
    for n, k in QWEN3_SHAPES.values():
        assert skinny.config_for(n, k, torch.device("cuda"), 2, num_sms=132)["BLOCK_N"] == 64


def test_config_programs_follow_the_sm_count(no_pdl):
    config_for = load("skinny_gemm").config_for
    cuda = torch.device("cuda")
    assert config_for(4096, 1024, cuda, num_sms=32)["BLOCK_N"] == 64   # 64 programs >= 2 x 32
    assert config_for(4096, 1024, cuda, num_sms=64)["BLOCK_N"] == 32   # 128 programs >= 2 x 64
    assert config_for(4096, 1024, cuda, num_sms=32, tiles_per_program=2)["BLOCK_N"] == 32
    assert config_for(4096, 1024, cuda, num_sms=132, tiles_per_program=2)["BLOCK_N"] == 16


@pytest.mark.parametrize("element_size", [2, 4])
@pytest.mark.parametrize("tiles", [1, 2])
def test_fused_config_fits_h100_shared_memory(element_size, tiles):
    """Every stage holds the weight tiles, x and the residual padded to 16 rows, and the norm weight:
    within the H100's 227 KiB per block for every Qwen3 shape."""
    for n, k in QWEN3_SHAPES.values():
        cfg = load("skinny_gemm").config_for(n, k, torch.device("cuda"), element_size, num_sms=132,
                                             tiles_per_program=tiles)
        per_stage = (tiles * cfg["BLOCK_N"] + 2 * 16 + 1) * cfg["BLOCK_K"] * element_size
        assert cfg["num_stages"] * per_stage <= 227 * 1024, (n, k, cfg)


# ---- the dispatch ----

def test_use_skinny_norm_conditions(monkeypatch):
    weight = torch.zeros(64, 32)
    x = torch.zeros(16, 32, dtype=torch.bfloat16)
    assert not ops.use_skinny_norm(x, weight)  # CPU tensors never take the kernels unforced
    monkeypatch.setattr(ops, "use_fused", lambda t: True)
    monkeypatch.setattr(ops, "FUSED_MIN_WEIGHT_NUMEL", 64 * 32)
    monkeypatch.setattr(ops, "SKINNY_MIN_WEIGHT_NUMEL", 1 << 40)
    assert ops.use_skinny_norm(x, weight) and not ops.use_skinny(x, weight)  # separate thresholds
    assert not ops.use_skinny_norm(torch.zeros(17, 32), weight)
    assert not ops.use_skinny_norm(x.half(), weight)
    assert not ops.use_skinny_norm(x, weight[:63])
    monkeypatch.setattr(ops, "SKINNY_ENABLED", False)
    assert not ops.use_skinny_norm(x, weight)


def test_thresholds_come_from_the_environment():
    code = "import models.layers.ops as o; print(o.SKINNY_MIN_WEIGHT_NUMEL, o.FUSED_MIN_WEIGHT_NUMEL)"
    env = dict(os.environ, ENGINE_SKINNY_MIN_NUMEL="123", ENGINE_SKINNY_FUSED_MIN_NUMEL="456")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["123", "456"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_SKINNY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None", str(1 << 62)]  # PDL decides the plain one; fused: off


def test_default_skinny_threshold_follows_pdl(monkeypatch):
    """Without an override the skinny GEMM takes every weight where PDL is on, only 32 MB ones otherwise."""
    monkeypatch.setattr(ops, "SKINNY_MIN_WEIGHT_NUMEL", None)
    monkeypatch.setattr(ops, "_skinny_fits", lambda x, weight, min_numel: weight.numel() >= min_numel)
    x = torch.zeros(1, 8)
    small, big = torch.zeros(4, 8), torch.zeros(ops.SKINNY_MIN_NUMEL_WITHOUT_PDL // 8, 8)
    monkeypatch.setattr(torch.Tensor, "is_cuda", property(lambda self: True))
    monkeypatch.setattr(ops, "pdl_enabled", lambda device: True)
    assert ops.use_skinny(x, small) and ops.use_skinny(x, big)
    monkeypatch.setattr(ops, "pdl_enabled", lambda device: False)
    assert not ops.use_skinny(x, small) and ops.use_skinny(x, big)


@pytest.mark.parametrize("silu", [False, True])
@pytest.mark.parametrize("with_residual", [False, True])
def test_dispatch_fused_equals_unfused(monkeypatch, silu, with_residual):
    """norm_linear(_silu) through the kernel (forced, counted) equals its own unfused path."""
    x, residual, norm_weight, weight, bias = _inputs(4, 48, 40, torch.float32, with_residual, True, seed=5)
    dispatch = ops.norm_linear_silu if silu else ops.norm_linear
    monkeypatch.setattr(ops, "use_skinny_norm", lambda x, w: False)
    expected = dispatch(x, residual, norm_weight, EPS, weight, bias)
    calls = []
    kernels = load("skinny_norm_gemm")
    name = "norm_gemm_silu" if silu else "norm_gemm"
    real = getattr(kernels, name)
    monkeypatch.setattr(kernels, name, lambda *a: calls.append(a[0].shape) or real(*a))
    monkeypatch.setattr(ops, "use_skinny_norm", lambda x, w: True)
    actual = dispatch(x, residual, norm_weight, EPS, weight, bias)
    assert calls == [(4, 40)]
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-4)


# ---- a tiny decoder through the fused dispatch ----

@pytest.mark.parametrize("preset,dtype", [("tiny-qwen3", torch.float32), ("tiny-qwen3", torch.bfloat16),
                                          ("tiny-qwen2", torch.float32), ("tiny-llama", torch.float32)])
def test_decoder_fused_dispatch_matches_unfused(monkeypatch, preset, dtype):
    """Prefill chunks and decode steps (T <= 16 take the fused kernels, T = 22 does not) give the same
    logits with the fused dispatch on (its real conditions, threshold 0) as the torch path."""
    config = get_preset(preset)
    model = build_model(config, None, "dummy", dtype, torch.device(DEVICE))
    randomize_hf_model(model, seed=3)  # norm weights 1 + noise: a dropped norm weight shows
    steps = [[[5, 9, 2], [7] * 6, list(range(20, 27))], [[11], [12], [13]], [list(range(40, 60)), [3], [4]]]

    def run():
        runner = PagedRunner(model, config, num_reqs=3, max_len=32, seed=1)
        return [runner.step(chunks) for chunks in steps]
    expected = run()
    kernels, calls = load("skinny_norm_gemm"), []
    for name in ("norm_gemm", "norm_gemm_silu"):
        real = getattr(kernels, name)
        monkeypatch.setattr(kernels, name, lambda *a, real=real: calls.append(a[0].shape[0]) or real(*a))
    monkeypatch.setattr(ops, "use_fused", lambda t: True)
    monkeypatch.setattr(ops, "FUSED_MIN_WEIGHT_NUMEL", 0)
    actual = run()
    layers = config.num_hidden_layers
    assert calls == [16] * 2 * layers + [3] * 2 * layers  # the 22-token step went the unfused way
    tol = 1e-4 if dtype == torch.float32 else 3e-2
    for got, want in zip(actual, expected):
        assert max_rel_err(got, want) < tol


# ---- on a GPU only: the real configs and CUDA-graph capture ----

@pytest.mark.skipif(not torch.cuda.is_available(), reason="the CUDA configs need a GPU")
@pytest.mark.parametrize("name", ["0.6b qkv", "0.6b gate_up", "8b qkv", "8b gate_up"])
@pytest.mark.parametrize("num_rows", [1, 16])
def test_qwen3_shapes_on_cuda(name, num_rows):
    n, k = QWEN3_SHAPES[name]
    silu = "gate_up" in name
    args = _inputs(num_rows, n, k, torch.bfloat16, True, False, seed=num_rows)
    out, new_residual = _run(silu, *args)
    expected, expected_residual = _unfused(*args, silu)
    assert max_rel_err(out.float(), expected.float()) < 2e-2
    torch.testing.assert_close(new_residual, expected_residual, rtol=0, atol=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_fused_kernels_replay_in_a_cuda_graph():
    x, residual, norm_weight, weight, bias = _inputs(4, 2048, 1024, torch.bfloat16, True, True, seed=13)

    def step():
        return _run(False, x, residual, norm_weight, weight, bias), _run(True, x, residual, norm_weight, weight)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    gen = torch.Generator().manual_seed(14)
    for tensor in (x, residual):
        tensor.copy_(torch.randn(tensor.shape, generator=gen).to(tensor.dtype))
    graph.replay()
    for got, want in zip(captured, step()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)

