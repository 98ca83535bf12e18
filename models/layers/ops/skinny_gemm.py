"""Triton GEMM for a few rows (decode at small batch): out[M, N] = x[M, K] @ W[N, K]^T (+ bias).

With M <= 16 a projection only streams its weight once, so its time is the weight read. Each program
takes BLOCK_N weight rows, walks K in BLOCK_K steps with a software pipeline, and multiplies on
tensor cores with the rows of x padded to 16.

H100 (engine/bench/skinny_gemm.py, 2026-11-25, CUDA-graph replays, weights not in L2): on weights of
32 MB and more it reads 2.3-3.1 TB/s and beats cuBLAS by 2-14% (Qwen3-8B projections, both LM heads);
alone, on the 4-12 MB projections of Qwen3-0.6B, both take 5.6-9 us, launch and ramp-up bound, and
cuBLAS is up to 15% faster. With PDL (pdl.py: the kernel starts during its predecessor's tail and
pulls its first weight tile into L2 meanwhile) it wins there too, inside the model: Qwen3-0.6B
batch-1 latency 1.47-1.55 -> 1.29 ms/token. `models.layers.ops.use_skinny` encodes both cases.
(Fusing SiLU-and-mul into the down projection's input was tried and was 3.5-4x slower: every program
recomputes the activation of all K. Folding the RMSNorm + residual add before qkv and gate_up into this
kernel was tried too, and removed: Qwen3-8B batch-1 latency 6.05 -> 9.67 ms/token, 0.6B 1.28 -> 1.69.)
"""
from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl

from models.layers.ops.pdl import pdl_enabled, pdl_kwargs

MAX_ROWS = 64       # x's rows are padded to BLOCK_M = row_block(M) (16, 32 or 64) for tl.dot
SHARED_MEMORY_BYTES = 220 << 10   # an H100 block may use 227 KiB
# ENGINE_SKINNY_SILU_BLOCK_N: rows of each of the gate and up tiles of the SiLU variant (an A/B knob)
SILU_BLOCK_N = int(os.environ.get("ENGINE_SKINNY_SILU_BLOCK_N", "0")) or None


@triton.jit
def prefetch_first_tile(w_rows, K, BLOCK_K: tl.constexpr):
    """Pull the first BLOCK_K columns of the weight rows `w_rows` ([BLOCK_N, 1] row pointers) into L2,
    one request per 128 bytes. Weights are never written, so with PDL this may run before gdc_wait
    and overlap the previous kernel's tail (H100: 8B chain 140.4 -> 138.8 us per layer; prefetching
    more than one tile thrashes L2 on the big weights)."""
    if BLOCK_K >= 64:
        lines = tl.arange(0, BLOCK_K // 64) * 64
        ptrs = w_rows + tl.where(lines < K, lines, 0)[None, :]
        tl.inline_asm_elementwise("prefetch.global.L2 [$1];", "=r,l", [ptrs], dtype=tl.int32, is_pure=False,
                                  pack=1)


@triton.jit
def load_row_tile(rows_ptr, kk, k_ok, EVEN_K: tl.constexpr, DOT_F32: tl.constexpr):
    """Columns kk of the rows `rows_ptr` ([ROWS, 1] row pointers, of the weight or of x): [ROWS, BLOCK_K],
    0 past K unless EVEN_K; float32 with DOT_F32 (the CPU interpreter's bf16 dot is wrong)."""
    if EVEN_K:
        tile = tl.load(rows_ptr + kk[None, :])
    else:
        tile = tl.load(rows_ptr + kk[None, :], mask=k_ok[None, :], other=0.0)
    if DOT_F32:
        tile = tile.to(tl.float32)
    return tile


@triton.jit
def bias_silu_epilogue(acc, acc_up, bias_ptr, cols, col_ok, N, out_ty: tl.constexpr, HAS_BIAS: tl.constexpr,
                       SILU: tl.constexpr):
    """The GEMM result [BLOCK_M, BLOCK_N] float32 from the accumulators of columns `cols`: plus the bias
    (HAS_BIAS), and with SILU silu(gate) * up, gate = acc, up = acc_up (bias columns N further),
    rounded as the unfused path rounds: gate and up to out_ty, then silu(gate) to out_ty."""
    if HAS_BIAS:
        acc += tl.load(bias_ptr + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    if SILU:
        if HAS_BIAS:
            acc_up += tl.load(bias_ptr + N + cols, mask=col_ok, other=0.0).to(tl.float32)[None, :]
        gate = acc.to(out_ty).to(tl.float32)
        silu = (gate / (1.0 + tl.exp(-gate))).to(out_ty).to(tl.float32)
        acc = silu * acc_up.to(out_ty).to(tl.float32)
    return acc


@triton.jit
def accumulate_tile(x_rows, row_ok, w_rows, u_rows, K, MASK_X_ROWS: tl.constexpr, EVEN_K: tl.constexpr,
                    SILU: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    DOT_F32: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    """The body both GEMMs share: with USE_PDL the PDL prologue (the first weight tile pulled into L2
    before the wait), then x @ W^T over the whole of K -> (acc, acc_up) float32 [BLOCK_M, BLOCK_N]
    (acc_up: the up rows `u_rows`, with SILU). x_rows, w_rows, u_rows: [BLOCK_M or BLOCK_N, 1] row
    pointers; MASK_X_ROWS: x's rows past `row_ok` load as 0 (else every x row pointer is valid)."""
    if USE_PDL:  # see models/layers/ops/pdl.py
        tl.extra.cuda.gdc_launch_dependents()
        prefetch_first_tile(w_rows, K, BLOCK_K)
        if SILU:
            prefetch_first_tile(u_rows, K, BLOCK_K)
        tl.extra.cuda.gdc_wait()
    ks = tl.arange(0, BLOCK_K)
    acc = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    acc_up = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + ks
        k_ok = kk < K
        if MASK_X_ROWS:
            x = tl.load(x_rows + kk[None, :], mask=row_ok[:, None] & k_ok[None, :], other=0.0)
            if DOT_F32:
                x = x.to(tl.float32)
        else:
            x = load_row_tile(x_rows, kk, k_ok, EVEN_K, DOT_F32)
        w = load_row_tile(w_rows, kk, k_ok, EVEN_K, DOT_F32)
        acc = tl.dot(x, tl.trans(w), acc, input_precision=PRECISION)
        if SILU:
            u = load_row_tile(u_rows, kk, k_ok, EVEN_K, DOT_F32)
            acc_up = tl.dot(x, tl.trans(u), acc_up, input_precision=PRECISION)
    return acc, acc_up


@triton.jit
def store_tile(out_rows, cols, row_ok, col_ok, acc, acc_up, bias_ptr, N, HAS_BIAS: tl.constexpr,
               SILU: tl.constexpr):
    """Write `bias_silu_epilogue`'s result at out_rows ([BLOCK_M, 1] row pointers) + cols, masked."""
    out_ty = out_rows.dtype.element_ty
    acc = bias_silu_epilogue(acc, acc_up, bias_ptr, cols, col_ok, N, out_ty, HAS_BIAS, SILU)
    tl.store(out_rows + cols[None, :], acc.to(out_ty), mask=row_ok[:, None] & col_ok[None, :])


@triton.jit
def _skinny_gemm_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                        HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SILU: tl.constexpr,
                        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                        DOT_F32: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    """Program n: out[:, n*BLOCK_N : (n+1)*BLOCK_N] over the whole of K. With SILU, W is a merged
    gate_up weight [2N, K]: the program also takes the up rows N further and writes silu(gate) * up."""
    cols = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    col_ok = cols < N
    rows = tl.arange(0, BLOCK_M)
    row_ok = rows < M
    w_rows = w_ptr + tl.where(col_ok, cols, 0).to(tl.int64)[:, None] * stride_wn
    acc, acc_up = accumulate_tile(x_ptr + rows[:, None] * stride_xm, row_ok, w_rows, w_rows + N * stride_wn, K,
                                  True, EVEN_K, SILU, BLOCK_M, BLOCK_N, BLOCK_K, DOT_F32, PRECISION, USE_PDL)
    store_tile(out_ptr + rows[:, None] * stride_om, cols, row_ok, col_ok, acc, acc_up, bias_ptr, N, HAS_BIAS,
               SILU)


MIN_PROGRAMS_PER_SM = 2       # small weights: shrink BLOCK_N until there are this many programs per SM
BIG_WEIGHT_BYTES = 32 << 20   # from here on (the Qwen3-8B projections, the LM heads) 64-row tiles were best


def num_sms_of(device: torch.device) -> int:
    """The CUDA device's SM count; 132 (an H100's) when no GPU can be asked (the CPU tests)."""
    if not torch.cuda.is_available():
        return 132
    return _sm_count(device.index if device.index is not None else torch.cuda.current_device())


@functools.cache
def _sm_count(device_index: int) -> int:
    return torch.cuda.get_device_properties(device_index).multi_processor_count


def row_block(num_rows: int) -> int:
    """BLOCK_M for M rows of x: the next power of two, at least 16 (tl.dot's smallest)."""
    return max(16, triton.next_power_of_2(num_rows))


def config_for(n: int, k: int, device: torch.device, element_size: int = 2,
               num_sms: int | None = None, num_rows: int = 1) -> dict:
    """Tile sizes for an [N, K] weight of `element_size`-byte elements, read for `num_rows` rows of x.

    H100 sweep at M = 1 (bf16, all Qwen3-8B projections and both lm_heads): 64 weight rows x 256
    columns per program, 4 warps, 4 stages is the best config or within 1.5% of it; float32 halves
    BLOCK_K to stay within shared memory, and M > 16 takes fewer stages for the same reason. Below
    BIG_WEIGHT_BYTES the rows per program halve (down to 16
    rows per tile) until there are MIN_PROGRAMS_PER_SM programs per SM (`num_sms`: default
    `num_sms_of(device)`): 64-row tiles give a 1024-row weight only 16 programs. Not with PDL
    (models/layers/ops/pdl.py), where 64 rows won on the small weights too (H100, Qwen3-0.6B
    chain of norms and projections in a CUDA graph: 26.5 us per layer with 64 rows, 29.5-33 with 32,
    38 with 16). The CPU config only keeps the interpreter quick."""
    block_k = min(512 // element_size, max(16, triton.next_power_of_2(k)))
    if device.type != "cuda":
        return dict(BLOCK_N=16, BLOCK_K=min(block_k, 64), num_warps=4, num_stages=1)
    rows = 64  # weight rows per program
    if n * k * element_size < BIG_WEIGHT_BYTES and not pdl_enabled(device):
        num_sms = num_sms or num_sms_of(device)
        while rows > 16 and triton.cdiv(n, rows) < MIN_PROGRAMS_PER_SM * num_sms:
            rows //= 2
    stage_bytes = (rows + row_block(num_rows)) * block_k * element_size   # weight tile + x tile
    return dict(BLOCK_N=rows, BLOCK_K=block_k, num_warps=4, num_stages=min(4, SHARED_MEMORY_BYTES // stage_bytes))


def check_gemm_inputs(x: torch.Tensor, weight: torch.Tensor, silu: bool, max_rows: int) -> tuple[int, int, int]:
    """(M, N, K) of x [M, K] @ weight [N, K]^T for the Triton GEMMs (N: half the weight's rows with a
    gate_up `silu`); ValueError unless x is 2-D with M <= max_rows and both have a unit last stride."""
    num_rows, k = x.shape[0], weight.shape[1]
    if x.dim() != 2 or x.shape[1] != k or num_rows > max_rows:
        raise ValueError(f"x must be [M <= {max_rows}, {k}] for a weight of shape {tuple(weight.shape)}, "
                         f"got {tuple(x.shape)}")
    if x.stride(1) != 1 or weight.stride(1) != 1:
        raise ValueError("x and weight must have a unit last stride")
    if silu and weight.shape[0] % 2:
        raise ValueError(f"a gate_up weight needs an even number of rows, got {weight.shape[0]}")
    return num_rows, (weight.shape[0] // 2 if silu else weight.shape[0]), k


def skinny_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
                config: dict | None = None, silu: bool = False) -> torch.Tensor:
    """x [M, K], weight [N, K], bias [N] or None, all one dtype with unit last stride, M <= 64
    -> out [M, N] in x's dtype (float32 accumulation). silu=True: weight is a merged gate_up [2I, K]
    (bias [2I]) and the result is silu(gate) * up [M, I], as silu_and_mul of the plain result; each
    program then reads BLOCK_N gate rows and the matching up rows (config's BLOCK_N counts one of them)."""
    num_rows, n, k = check_gemm_inputs(x, weight, silu, MAX_ROWS)
    out = torch.empty(num_rows, n, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    cfg = dict(config or config_for(weight.shape[0], k, x.device, x.element_size(), num_rows=num_rows))
    if silu and config is None:   # the same weight rows per program, in two tiles (or SILU_BLOCK_N per tile)
        cfg["BLOCK_N"] = SILU_BLOCK_N or max(16, cfg["BLOCK_N"] // 2)
    cpu = x.device.type == "cpu"
    _skinny_gemm_kernel[(triton.cdiv(n, cfg["BLOCK_N"]),)](
        x, weight, bias if bias is not None else weight, out, num_rows, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0, SILU=silu, BLOCK_M=row_block(num_rows),
        DOT_F32=cpu, PRECISION="ieee" if cpu or x.dtype == torch.float32 else "tf32", **cfg, **pdl_kwargs(x))
    return out
