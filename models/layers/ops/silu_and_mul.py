"""Triton SiLU-and-multiply over the fused gate_up projection output."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.layers.ops.pdl import pdl_kwargs

MAX_BLOCK = 1024


@triton.jit
def _silu_and_mul_kernel(x_ptr, out_ptr, stride_x, stride_o,
                         INTERMEDIATE: tl.constexpr, BLOCK: tl.constexpr, USE_PDL: tl.constexpr):
    """Program (token, block): out[c] = silu(gate[c]) * up[c] for BLOCK columns c."""
    if USE_PDL:  # see models/layers/ops/pdl.py
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    token = tl.program_id(0).to(tl.int64)
    cols = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
    mask = cols < INTERMEDIATE
    row = x_ptr + token * stride_x
    gate = tl.load(row + cols, mask=mask, other=0.0).to(tl.float32)
    up = tl.load(row + INTERMEDIATE + cols, mask=mask, other=0.0).to(tl.float32)
    # silu(gate) is rounded to the model dtype before the product, as the torch path does.
    silu = (gate / (1.0 + tl.exp(-gate))).to(out_ptr.dtype.element_ty).to(tl.float32)
    tl.store(out_ptr + token * stride_o + cols, (silu * up).to(out_ptr.dtype.element_ty), mask=mask)


def silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2 * I] laid out [gate | up] (bf16/fp16/fp32, unit last stride) -> silu(gate) * up [T, I]."""
    if x.dim() != 2 or x.shape[1] % 2 or x.stride(1) != 1:
        raise ValueError(f"x must be [T, 2 * I] with a unit last stride, got shape {tuple(x.shape)}")
    num_tokens, intermediate = x.shape[0], x.shape[1] // 2
    out = torch.empty(num_tokens, intermediate, dtype=x.dtype, device=x.device)
    if num_tokens == 0 or intermediate == 0:
        return out
    block = min(triton.next_power_of_2(intermediate), MAX_BLOCK)
    _silu_and_mul_kernel[(num_tokens, triton.cdiv(intermediate, block))](
        x, out, x.stride(0), out.stride(0), INTERMEDIATE=intermediate, BLOCK=block,
        num_warps=4 if block >= 512 else 1, **pdl_kwargs(x))
    return out
