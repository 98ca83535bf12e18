"""Float64 references and random inputs for the Triton GEMM tests (skinny and tile GEMMs)."""
from __future__ import annotations

import torch

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


def reference(x, weight, bias):
    """x @ weight^T (+ bias) in float64, on x's device."""
    out = x.double() @ weight.double().T
    return out + bias.double() if bias is not None else out


def silu_reference(x, weight, bias, dtype):
    """silu(gate) * up of the projection, rounded as the unfused kernels round (float64 math)."""
    gate, up = reference(x, weight, bias).to(dtype).double().chunk(2, dim=-1)
    return (gate * torch.sigmoid(gate)).to(dtype).double() * up


def gemm_inputs(num_rows, n, k, dtype, with_bias, seed):
    """x [num_rows, k], weight [n, k] (scaled by 1/sqrt(k)) and bias [n] or None, in `dtype` on DEVICE."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(num_rows, k, generator=gen).to(dtype).to(DEVICE)
    weight = (torch.randn(n, k, generator=gen) / k ** 0.5).to(dtype).to(DEVICE)
    bias = torch.randn(n, generator=gen).to(dtype).to(DEVICE) if with_bias else None
    return x, weight, bias
