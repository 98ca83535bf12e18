"""The skinny GEMM (models/layers/ops/skinny_gemm.py) against float64 math, its tile-size rule
(config_for), and the layers' dispatch with its thresholds.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET is set before
the kernel module is first loaded, as in test_fused_ops.py).
"""
import os
import subprocess
import sys

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from models.layers import linear  # noqa: E402
from models.layers import ops  # noqa: E402
from models.layers.ops import load  # noqa: E402
from tests.models.gemm_reference import gemm_inputs as _inputs  # noqa: E402
from tests.models.gemm_reference import reference as _reference  # noqa: E402
from tests.models.gemm_reference import silu_reference as _silu_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
QWEN3_SHAPES = {  # name: (N, K), as in engine/bench/skinny_gemm.py
    "0.6b qkv": (4096, 1024), "0.6b o": (1024, 2048), "0.6b gate_up": (6144, 1024), "0.6b down": (1024, 3072),
    "0.6b lm_head": (151936, 1024), "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (24576, 4096),
    "8b down": (4096, 12288), "8b lm_head": (151936, 4096),
}


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [1, 3, 8, 16, 17, 64])
@pytest.mark.parametrize("n,k", [(64, 256), (40, 48), (300, 96)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_gemm_matches_float64(num_rows, n, k, dtype, with_bias):
    x, weight, bias = _inputs(num_rows, n, k, dtype, with_bias, seed=num_rows * n + k)
    out = load("skinny_gemm").skinny_gemm(x, weight, bias)
    assert out.shape == (num_rows, n) and out.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.double(), _reference(x, weight, bias).to(DEVICE), **tol)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows,n,k,block_n", [(1, 128, 256, None), (5, 80, 96, None), (16, 300, 48, 16),
                                                  (3, 150, 520, 64), (40, 80, 96, None)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_gemm_silu_matches_unfused(num_rows, n, k, block_n, dtype, with_bias):
    """silu=True on a merged [gate | up] weight [2I, K]: silu(gate) * up [M, I] (ragged I, tiles forced)."""
    x, weight, bias = _inputs(num_rows, 2 * n, k, dtype, with_bias, seed=num_rows + n + k)
    cfg = None if block_n is None else dict(BLOCK_N=block_n, BLOCK_K=64, num_warps=4, num_stages=1)
    out = load("skinny_gemm").skinny_gemm(x, weight, bias, config=cfg, silu=True)
    assert out.shape == (num_rows, n) and out.dtype == dtype
    unfused = ops.silu_and_mul_native(load("skinny_gemm").skinny_gemm(x, weight, bias, config=cfg))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out, unfused, **tol)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)  # 2 roundings
    torch.testing.assert_close(out.double(), _silu_reference(x, weight, bias, dtype).to(DEVICE), **tol)
    with pytest.raises(ValueError, match="even number of rows"):
        load("skinny_gemm").skinny_gemm(x, weight[1:], silu=True)


@pytest.mark.parametrize("skinny", [True, False])
def test_merged_linear_silu_and_mul_dispatch(monkeypatch, skinny):
    """MergedColumnParallelLinear.forward_silu_and_mul: one fused launch where use_skinny says so,
    else the projection then SiLU-and-mul; both equal the float64 math."""
    gen = torch.Generator().manual_seed(5)
    layer = linear.MergedColumnParallelLinear(48, [40, 40], bias=True).to(DEVICE)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(80, 48, generator=gen) / 7)
        layer.bias.copy_(torch.randn(80, generator=gen))
    x = torch.randn(3, 48, generator=gen).to(DEVICE)
    fused = []
    skinny_gemm = load("skinny_gemm").skinny_gemm
    monkeypatch.setattr(ops, "use_skinny", lambda x, w: skinny)
    monkeypatch.setattr(load("skinny_gemm"), "skinny_gemm", lambda *a, **k: fused.append(k.get("silu")) or
                        skinny_gemm(*a, **k))
    out = layer.forward_silu_and_mul(x)
    torch.testing.assert_close(out.double(), _silu_reference(x, layer.weight, layer.bias, torch.float32),
                               rtol=1e-4, atol=1e-4)
    assert fused == ([True] if skinny else [])
    with pytest.raises(ValueError, match="two equal outputs"):
        linear.MergedColumnParallelLinear(48, [40, 8]).forward_silu_and_mul(x.cpu())


def test_skinny_gemm_every_tile_shape():
    """Each BLOCK_N / BLOCK_K the CUDA heuristic can pick, forced here, on a ragged N and K."""
    skinny = load("skinny_gemm")
    x, weight, bias = _inputs(5, 150, 520, torch.float32, True, seed=7)
    expected = _reference(x, weight, bias).to(DEVICE)
    for block_n in (16, 32, 64):
        for block_k in (64, 128, 256):
            cfg = dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=1)
            out = skinny.skinny_gemm(x, weight, bias, config=cfg)
            torch.testing.assert_close(out.double(), expected, rtol=1e-4, atol=1e-4)


def test_skinny_gemm_rejects_bad_shapes():
    skinny = load("skinny_gemm")
    weight = torch.zeros(8, 32, device=DEVICE)
    with pytest.raises(ValueError, match="M <= 64"):
        skinny.skinny_gemm(torch.zeros(65, 32, device=DEVICE), weight)
    with pytest.raises(ValueError, match="got \\(2, 16\\)"):
        skinny.skinny_gemm(torch.zeros(2, 16, device=DEVICE), weight)


@pytest.mark.parametrize("layer_kind", ["column", "row", "lm_head"])
def test_layers_take_the_skinny_path_and_match(monkeypatch, layer_kind):
    """With the dispatch forced on (as for a big weight at small M on CUDA), the layers' output
    equals float64 math; forced off, it is F.linear's."""
    from models.layers import embedding
    gen = torch.Generator().manual_seed(3)
    if layer_kind == "lm_head":
        layer, bias = embedding.ParallelLMHead(40, 48), None
    else:
        cls = linear.ColumnParallelLinear if layer_kind == "column" else linear.RowParallelLinear
        layer = cls(48, 40, bias=True)
    layer = layer.to(DEVICE)
    with torch.no_grad():
        layer.weight.copy_(torch.randn(40, 48, generator=gen))
        if layer_kind != "lm_head":
            layer.bias.copy_(torch.randn(40, generator=gen))
            bias = layer.bias
    x = torch.randn(3, 48, generator=gen).to(DEVICE)
    calls = []
    monkeypatch.setattr(ops, "use_skinny", lambda x, w: calls.append(w.shape) or True)
    torch.testing.assert_close(layer(x).double(), _reference(x, layer.weight, bias), rtol=1e-4, atol=1e-4)
    assert calls == [(40, 48)]


@pytest.mark.parametrize("element_size", [2, 4])
@pytest.mark.parametrize("num_rows", [1, 16, 17, 64])
def test_cuda_config_fits_h100_shared_memory(element_size, num_rows):
    """The pipelined tiles (weight and padded x, every stage) fit the H100's 227 KiB per block; float32
    once asked for 240 KiB there."""
    skinny = load("skinny_gemm")
    cfg = skinny.config_for(4096, 4096, torch.device("cuda"), element_size, num_rows=num_rows)
    tiles = cfg["num_stages"] * (cfg["BLOCK_N"] + skinny.row_block(num_rows)) * cfg["BLOCK_K"] * element_size
    assert tiles <= 227 * 1024 and cfg["num_stages"] >= 2


# ---- config_for: enough programs for small weights, the measured 64 x 256 tiles for big ones ----

@pytest.fixture
def no_pdl(monkeypatch):
    """The tile rule without PDL (on a Hopper GPU the tests would otherwise see PDL's rule)."""
    from models.layers.ops import pdl
    monkeypatch.setattr(pdl, "ENABLED", False)


@pytest.mark.parametrize("name", list(QWEN3_SHAPES))
def test_config_programs(no_pdl, name):
    n, k = QWEN3_SHAPES[name]
    cfg = load("skinny_gemm").config_for(n, k, torch.device("cuda"), 2, num_sms=132)
    if name.startswith("8b") or "lm_head" in name:  # >= 32 MB: what the H100 sweep picked
        assert cfg == dict(BLOCK_N=64, BLOCK_K=256, num_warps=4, num_stages=4)
    else:  # the 0.6b projections: 16-row tiles (64 programs for N = 1024 where BLOCK_N = 64 gave 16)
        assert cfg["BLOCK_N"] == 16 and cfg["BLOCK_K"] == 256
        assert -(-n // cfg["BLOCK_N"]) == {4096: 256, 1024: 64, 6144: 384}[n]


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


# ---- the dispatch's threshold ----

def test_threshold_comes_from_the_environment():
    code = "import models.layers.ops as o; print(o.SKINNY_MIN_WEIGHT_NUMEL)"
    env = dict(os.environ, ENGINE_SKINNY_MIN_NUMEL="123")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["123"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("ENGINE_SKINNY")}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["None"]  # PDL decides


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
