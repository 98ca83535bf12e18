"""Triton RMSNorm, optionally fused with the residual add: one program per row, one launch."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.layers.ops import num_warps_for
from models.layers.ops.pdl import pdl_kwargs

MAX_HIDDEN_SIZE = 65536  # one row is held in registers


@triton.jit
def _rms_norm_kernel(x_ptr, residual_ptr, weight_ptr, out_ptr, new_residual_ptr,
                     stride_x, stride_r, stride_o, stride_nr, eps,
                     HIDDEN_SIZE: tl.constexpr, BLOCK: tl.constexpr, HAS_RESIDUAL: tl.constexpr,
                     USE_PDL: tl.constexpr):
    """Row `row`: s = x (+ residual); new_residual = s; out = s * rsqrt(mean(s^2) + eps) * weight."""
    if USE_PDL:  # see models/layers/ops/pdl.py
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    row = tl.program_id(0).to(tl.int64)
    cols = tl.arange(0, BLOCK)
    mask = cols < HIDDEN_SIZE
    x = tl.load(x_ptr + row * stride_x + cols, mask=mask, other=0.0).to(tl.float32)
    if HAS_RESIDUAL:
        x += tl.load(residual_ptr + row * stride_r + cols, mask=mask, other=0.0).to(tl.float32)
        tl.store(new_residual_ptr + row * stride_nr + cols, x.to(new_residual_ptr.dtype.element_ty), mask=mask)
    variance = tl.sum(x * x, axis=0) / HIDDEN_SIZE
    weight = tl.load(weight_ptr + cols, mask=mask, other=0.0).to(tl.float32)
    out = x * tl.rsqrt(variance + eps) * weight
    tl.store(out_ptr + row * stride_o + cols, out.to(out_ptr.dtype.element_ty), mask=mask)


def _rows(x: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """x [..., hidden_size] as [rows, hidden_size] with a unit last stride (a view when possible)."""
    if x.shape[-1] != hidden_size:
        raise ValueError(f"x.shape[-1] must be hidden_size={hidden_size}, got {x.shape[-1]}")
    rows = x.reshape(-1, hidden_size)
    return rows if rows.stride(-1) == 1 else rows.contiguous()


def _launch(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    hidden_size = weight.shape[0]
    if not 0 < hidden_size <= MAX_HIDDEN_SIZE:
        raise ValueError(f"hidden_size must be in [1, {MAX_HIDDEN_SIZE}], got {hidden_size}")
    rows = _rows(x, hidden_size)
    out = torch.empty(rows.shape, dtype=x.dtype, device=x.device)
    res_rows = _rows(residual, hidden_size) if residual is not None else rows
    new_residual = torch.empty_like(out) if residual is not None else out
    if rows.shape[0] > 0:
        block = triton.next_power_of_2(hidden_size)
        _rms_norm_kernel[(rows.shape[0],)](
            rows, res_rows, weight, out, new_residual,
            rows.stride(0), res_rows.stride(0), out.stride(0), new_residual.stride(0), eps,
            HIDDEN_SIZE=hidden_size, BLOCK=block, HAS_RESIDUAL=residual is not None,
            num_warps=num_warps_for(block), **pdl_kwargs(x))
    return out.view(x.shape), new_residual.view(x.shape)


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """x [..., H] (bf16/fp16/fp32), weight [H] -> x * rsqrt(mean(x^2) + eps) * weight, new tensor in x.dtype."""
    return _launch(x, None, weight, eps)[0]


def fused_add_rms_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor,
                       eps: float) -> tuple[torch.Tensor, torch.Tensor]:
    """x, residual [..., H], weight [H] -> (rms_norm(x + residual), x + residual), both new tensors.

    The sum is taken in float32; the returned residual is that sum rounded to x.dtype, while the norm
    uses the unrounded float32 sum (as the torch path does). The inputs are not modified.
    """
    if residual.shape != x.shape:
        raise ValueError(f"residual.shape must equal x.shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    return _launch(x, residual, weight, eps)
