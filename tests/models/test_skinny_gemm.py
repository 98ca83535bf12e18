"""The skinny GEMM (models/layers/ops/skinny_gemm.py) against float64 math, and the layers' dispatch.

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET is set before
the kernel module is first loaded, as in test_fused_ops.py).
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from models.layers import linear  # noqa: E402
from models.layers import ops  # noqa: E402
from models.layers.ops import load  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def _reference(x, weight, bias):
    out = x.double() @ weight.double().T
    return out + bias.double() if bias is not None else out


def _inputs(num_rows, n, k, dtype, with_bias, seed):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, k, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.randn(n, k, generator=gen) / k ** 0.5).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(dtype).to(DEVICE) if with_bias else None
    return x, weight, bias


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [1, 3, 8, 16])
@pytest.mark.parametrize("n,k", [(64, 256), (40, 48), (300, 96)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_skinny_gemm_matches_float64(num_rows, n, k, dtype, with_bias):
    x, weight, bias = _inputs(num_rows, n, k, dtype, with_bias, seed=num_rows * n + k)
    out = load("skinny_gemm").skinny_gemm(x, weight, bias)
    assert out.shape == (num_rows, n) and out.dtype == dtype
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)
    torch.testing.assert_close(out.double(), _reference(x, weight, bias).to(DEVICE), **tol)


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
    with pytest.raises(ValueError, match="M <= 16"):
        skinny.skinny_gemm(torch.zeros(17, 32, device=DEVICE), weight)
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
def test_cuda_config_fits_h100_shared_memory(element_size):
    """The pipelined tiles (weight and padded x, every stage) fit the H100's 227 KiB per block; float32
    once asked for 240 KiB there."""
    cfg = load("skinny_gemm").config_for(4096, 4096, torch.device("cuda"), element_size)
    tiles = cfg["num_stages"] * (cfg["BLOCK_N"] + 16) * cfg["BLOCK_K"] * element_size
    assert tiles <= 227 * 1024
