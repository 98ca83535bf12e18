"""Triton GEMM for a few rows (decode at small batch): out[M, N] = x[M, K] @ W[N, K]^T (+ bias).

With M <= 16 a projection only streams its weight once, so its time is the weight read. cuBLAS picks
tiles for larger M there; this kernel gives each program a thin slice of BLOCK_N weight rows (so
even the small projections of a 0.6B model spread over every multiprocessor), walks K in BLOCK_K
steps with a software pipeline, and multiplies on tensor cores with the rows of x padded to 16.

`silu_mul=True` takes x as the fused gate_up output [M, 2K] and multiplies by silu(gate) * up,
computed on the fly, so the MLP's down projection needs no separate activation kernel.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

MAX_ROWS = 16       # BLOCK_M: x's rows are padded to this for tl.dot


@triton.jit
def _load_x(x_ptr, rows, row_ok, kk, k_ok, stride_xm, K, SILU_MUL: tl.constexpr, DOT_F32: tl.constexpr):
    """x[rows, kk] as the dot's left operand; with SILU_MUL, silu(gate) * up from [gate | up]."""
    offs = rows[:, None] * stride_xm + kk[None, :]
    mask = row_ok[:, None] & k_ok[None, :]
    x = tl.load(x_ptr + offs, mask=mask, other=0.0)
    if SILU_MUL:
        gate = x.to(tl.float32)
        up = tl.load(x_ptr + offs + K, mask=mask, other=0.0).to(tl.float32)
        # silu(gate) rounded to the model dtype before the product, like the unfused path.
        silu = (gate / (1.0 + tl.exp(-gate))).to(x_ptr.dtype.element_ty).to(tl.float32)
        x = (silu * up).to(x_ptr.dtype.element_ty)
    if DOT_F32:
        x = x.to(tl.float32)
    return x


@triton.jit
def _skinny_gemm_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                        HAS_BIAS: tl.constexpr, SILU_MUL: tl.constexpr, EVEN_K: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """Program n: out[:, n*BLOCK_N : (n+1)*BLOCK_N] over the whole of K."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    w_rows = w_ptr + tl.where(col_ok, cols, 0).to(tl.int64)[:, None] * stride_wn
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < K
        x = _load_x(x_ptr, rows, row_ok, kk, k_ok, stride_xm, K, SILU_MUL, DOT_F32)
        if EVEN_K:
            w = tl.load(w_rows + kk[None, :])
        else:
            w = tl.load(w_rows + kk[None, :], mask=k_ok[None, :], other=0.0)
        if DOT_F32:
            w = w.to(tl.float32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out = out_ptr + rows[:, None] * stride_om + cols[None, :]
    tl.store(out, acc.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & col_ok[None, :])


@functools.cache
def _num_sms(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def config_for(n: int, k: int, device: torch.device) -> dict:
    """Tile sizes for an [N, K] weight: the widest BLOCK_N that still gives two programs per SM.

    H100 sweep (engine/bench/skinny_gemm.py, 2026-11-25) set these; the CPU config only keeps the
    interpreter quick.
    """
    block_k = min(256, max(16, triton.next_power_of_2(k)))
    if device.type != "cuda":
        return dict(BLOCK_N=16, BLOCK_K=min(block_k, 64), num_warps=4, num_stages=1)
    min_programs = 2 * _num_sms(device.index or 0)
    block_n = next((b for b in (64, 32) if triton.cdiv(n, b) >= min_programs), 16)
    return dict(BLOCK_N=block_n, BLOCK_K=block_k, num_warps=4, num_stages=4 if block_n < 64 else 3)


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                silu_mul: bool = False, config: dict | None = None) -> torch.Tensor:
    """x [M, K] (or [M, 2K] laid out [gate | up] with silu_mul), weight [N, K], bias [N] or None,
    all one dtype with unit last stride, M <= 16 -> out [M, N] in x's dtype (float32 accumulation)."""
    num_rows, k = x.shape[0], weight.shape[1]
    if x.dim() != 2 or x.shape[1] != k * (2 if silu_mul else 1) or num_rows > MAX_ROWS:
        raise ValueError(f"x must be [M <= {MAX_ROWS}, {k * (2 if silu_mul else 1)}] for a weight of shape "
                         f"{tuple(weight.shape)}{' with silu_mul' if silu_mul else ''}, got {tuple(x.shape)}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("x and weight must have a unit last stride")
    n = weight.shape[0]
    out = torch.empty(num_rows, n, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    cfg = dict(config or config_for(n, k, x.device))
    cpu = x.device.type == "cpu"
    _skinny_gemm_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
        x, weight, bias if bias is not None else weight, out, num_rows, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, SILU_MUL=silu_mul, EVEN_K=k % cfg["BLOCK_K"] == 0, BLOCK_M=MAX_ROWS,
        DOT_F32=cpu, PRECISION="ieee" if cpu or x.dtype == torch.float32 else "tf32", **cfg)
    return out
