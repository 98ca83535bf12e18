"""The skinny GEMM (skinny_gemm.py) with an RMSNorm prologue, and optionally a SiLU-and-mul epilogue:
one launch for "norm (+ residual add) -> projection (-> silu(gate) * up)" at M <= 16 rows.

    h[m, k]   = x[m, k] (+ residual[m, k])                          float32
    rstd[m]   = rsqrt(mean_k h[m, k]^2 + eps)
    out[m, n] = rstd[m] * sum_k (h[m, k] * g[k]) * W[n, k] (+ bias[n])

The norm needs the whole row, the dot only a K tile: rstd is not known until the K loop ends, so each
program feeds the unscaled h * g to the dot, sums h^2 in the same loop (x is a few rows: every program
reads all of it, in L2) and scales its accumulator once after the loop. There is no second pass
over K and no normalised activation in memory. Program 0 also writes h, rounded to x's dtype, as the
next residual. The dot's operand is h * g rounded to the weight dtype where the torch path rounds
h * rstd * g: one rounding either way.

With `silu`, W is a merged gate_up weight [2I, K] (gate rows 0..I-1, up rows I..2I-1, as loaded):
program j takes gate rows j*BLOCK_N.. and the same up rows I + j*BLOCK_N.., keeps two accumulators,
and writes silu(gate) * up [M, I]. gate and up are rounded to the output dtype first and silu(gate)
after, as the unfused gate_up GEMM + silu_and_mul kernel do.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.layers.ops.pdl import pdl_kwargs
from models.layers.ops.skinny_gemm import MAX_ROWS, config_for, load_weight_tile, prefetch_first_tile


@triton.jit
def _norm_gemm_kernel(x_ptr, res_ptr, g_ptr, w_ptr, bias_ptr, out_ptr, new_res_ptr,
                      M, N_OUT, K, UP_OFFSET, stride_xm, stride_rm, stride_wn, stride_om, stride_nm, eps,
                      HAS_RESIDUAL: tl.constexpr, HAS_BIAS: tl.constexpr, SILU: tl.constexpr,
                      EVEN_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                      BLOCK_K: tl.constexpr, DOT_F32: tl.constexpr, PRECISION: tl.constexpr,
                      USE_PDL: tl.constexpr):
    """Program j: out[:, j*BLOCK_N : (j+1)*BLOCK_N] over the whole of K (with SILU: from the gate rows
    there and the up rows UP_OFFSET further)."""
    pid = tl.program_id(0)
    cols = pid * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N_OUT
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    write_rows = row_ok & (tl.zeros([BLOCK_M], tl.int32) + pid == 0)  # the new residual: program 0 only
    w_rows = w_ptr + tl.where(col_ok, cols, 0).to(tl.int64)[:, None] * stride_wn
    u_rows = w_ptr + tl.where(col_ok, cols + UP_OFFSET, 0).to(tl.int64)[:, None] * stride_wn
    if USE_PDL:  # see models/layers/ops/pdl.py; it replaces the norm / SiLU kernels, which use it too
        tl.extra.cuda.gdc_launch_dependents()
        prefetch_first_tile(w_rows, K, BLOCK_K)
        if SILU:
            prefetch_first_tile(u_rows, K, BLOCK_K)
        tl.extra.cuda.gdc_wait()
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    # Squares are summed elementwise in the loop and reduced across K once after it: a reduction
    # inside the loop synchronizes the warps every step (suspected cause of the H100 slowdown, to measure).
    squares = tl.zeros([BLOCK_M, BLOCK_K], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < K
        x_ok = row_ok[:, None] & k_ok[None, :]
        h = tl.load(x_ptr + rows[:, None] * stride_xm + kk[None, :], mask=x_ok, other=0.0).to(tl.float32)
        if HAS_RESIDUAL:
            r = tl.load(res_ptr + rows[:, None] * stride_rm + kk[None, :], mask=x_ok, other=0.0)
            h += r.to(tl.float32)
            tl.store(new_res_ptr + rows[:, None] * stride_nm + kk[None, :],
                     h.to(new_res_ptr.dtype.element_ty), mask=write_rows[:, None] & k_ok[None, :])
        squares += h * h
        a = h * tl.load(g_ptr + kk, mask=k_ok, other=0.0).to(tl.float32)[None, :]
        w = load_weight_tile(w_rows, kk, k_ok, EVEN_K, DOT_F32)
        if not DOT_F32:
            a = a.to(w.dtype)
        acc = tl.dot(a, tl.trans(w), acc, input_precision=PRECISION)
        if SILU:
            u = load_weight_tile(u_rows, kk, k_ok, EVEN_K, DOT_F32)
            acc_up = tl.dot(a, tl.trans(u), acc_up, input_precision=PRECISION)
    rstd = tl.rsqrt(tl.sum(squares, axis=1) / K + eps)[:, None]
    out = acc * rstd
    if HAS_BIAS:
        out += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    out_ty = out_ptr.dtype.element_ty
    if SILU:
        up = acc_up * rstd
        if HAS_BIAS:
            up += tl.load(bias_ptr + UP_OFFSET + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        gate = out.to(out_ty).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(out_ty).to(tl.float32)
        out = silu * up.to(out_ty).to(tl.float32)
    tl.store(out_ptr + rows[:, None] * stride_om + cols[None, :], out.to(out_ty),
             mask=row_ok[:, None] & col_ok[None, :])


def _check(x, residual, norm_weight, weight, bias, n_out):
    k = weight.shape[1]
    if x.dim() != 2 or x.shape[1] != k or x.shape[0] > MAX_ROWS:
        raise ValueError(f"x must be [M <= {MAX_ROWS}, {k}] for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(x.shape)}")
    if residual is not None and residual.shape != x.shape:
        raise ValueError(f"residual.shape must equal x.shape {tuple(x.shape)}, got {tuple(residual.shape)}")
    if norm_weight.shape != (k,):
        raise ValueError(f"norm_weight must be [{k}], got {tuple(norm_weight.shape)}")
    if bias is not None and bias.shape != (weight.shape[0],):
        raise ValueError(f"bias must be [{weight.shape[0]}], got {tuple(bias.shape)}")
    if any(t is not None and t.stride(-1) != 1 for t in (x, residual, norm_weight, weight, bias)):
        raise ValueError("x, residual, norm_weight, weight and bias must have a unit last stride")
    if n_out == 0:
        raise ValueError("the weight has no rows")


def _launch(x, residual, norm_weight, eps, weight, bias, silu, config):
    num_rows, (n, k) = x.shape[0], weight.shape
    if silu and n % 2:
        raise ValueError(f"a gate_up weight needs an even number of rows, got {n}")
    n_out = n // 2 if silu else n
    _check(x, residual, norm_weight, weight, bias, n_out)
    out = torch.empty(num_rows, n_out, dtype=x.dtype, device=x.device)
    new_residual = torch.empty_like(x) if residual is not None else x
    if num_rows == 0:
        return out, new_residual
    cfg = dict(config or config_for(n, k, x.device, x.element_size(), tiles_per_program=2 if silu else 1))
    cpu = x.device.type == "cpu"
    _norm_gemm_kernel[(triton.cdiv(n_out, cfg["BLOCK_N"]),)](
        x, residual if residual is not None else x, norm_weight, weight, bias if bias is not None else weight,
        out, new_residual, num_rows, n_out, k, n_out if silu else 0,
        x.stride(0), (residual if residual is not None else x).stride(0), weight.stride(0), out.stride(0),
        new_residual.stride(0), eps,
        HAS_RESIDUAL=residual is not None, HAS_BIAS=bias is not None, SILU=silu,
        EVEN_K=k % cfg["BLOCK_K"] == 0, BLOCK_M=MAX_ROWS, DOT_F32=cpu,
        PRECISION="ieee" if cpu or x.dtype == torch.float32 else "tf32", **cfg, **pdl_kwargs(x))
    return out, new_residual


def norm_gemm(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
              weight: torch.Tensor, bias: torch.Tensor | None = None,
              config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """x [M <= 16, K], residual [M, K] or None, norm_weight [K], weight [N, K], bias [N] or None
    (bf16 / fp32, x, residual, weight and bias of one dtype, norm_weight any float; unit last strides)
    -> (rms_norm(x + residual) @ weight^T + bias [M, N] in x's dtype, new residual [M, K]).

    The new residual is x + residual rounded to x's dtype (a new tensor), or x itself without a
    residual, as RMSNorm.forward_native gives it. The inputs are not modified."""
    return _launch(x, residual, norm_weight, eps, weight, bias, False, config)


def norm_gemm_silu(x: torch.Tensor, residual: torch.Tensor | None, norm_weight: torch.Tensor, eps: float,
                   weight: torch.Tensor, bias: torch.Tensor | None = None,
                   config: dict | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """As `norm_gemm` for a merged gate_up weight [2I, K] (bias [2I]): with y = the [M, 2I] projection,
    -> (silu(y[:, :I]) * y[:, I:] [M, I] in x's dtype, new residual [M, K]). BLOCK_N in `config` counts
    the rows of one of the two tiles."""
    return _launch(x, residual, norm_weight, eps, weight, bias, True, config)
