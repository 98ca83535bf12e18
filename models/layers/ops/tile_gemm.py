"""Triton GEMM for decode batches past the skinny GEMM's reach (17 to 256 rows):
out[M, N] = x[M, K] @ W[N, K]^T (+ bias), optionally with SiLU-and-mul applied to a gate_up result.

cuBLAS is built for big matrices; at these M a projection is a few microseconds of weight reads
(Qwen3-0.6B) or sits between its memory and compute floors (Qwen3-8B), and cuBLAS cannot take part
in PDL (pdl.py), so every GEMM adds a launch gap next to the Triton kernels around it. Here each
program computes one BLOCK_M x BLOCK_N tile over the whole of K; the programs that share a weight
tile are numbered next to each other (M fastest) so the weight is read from memory once and from
L2 by the rest. With PDL the program pulls its first weight tile into L2 before it waits.

Tile configs come from `engine/bench/tile_gemm.py` (timed per projection shape and M against
cuBLAS) as a JSON table; DEVICE_TABLES names the table shipped for a GPU (tile_configs_h100.json:
the Qwen3-0.6B and -8B projections). The engine takes the tile GEMM only where its device's table
holds a config for the shape and M (`winning_config`); elsewhere cuBLAS. ENGINE_TILE_GEMM_CONFIGS may name
another table file (for A/B runs of a fresh sweep).
"""
from __future__ import annotations

import functools
import json
import os

import torch
import triton
import triton.language as tl

from models.layers.ops.pdl import pdl_kwargs
from models.layers.ops.skinny_gemm import accumulate_tile, check_gemm_inputs, store_tile

MAX_ROWS = 256
SHARED_MEMORY_BYTES = 220 << 10
# The table shipped per GPU: a device whose name holds the key reads the file (next to this module).
# A table maps "N,K,silu" to [[largest M, config or null], ...] in increasing M; null: cuBLAS was faster.
DEVICE_TABLES = {"H100": "tile_configs_h100.json"}
CPU_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, num_warps=4, num_stages=1)


@triton.jit(do_not_specialize=["M"])   # one variant for every batch size
def _tile_gemm_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, M, N, K, stride_xm, stride_wn, stride_om,
                      HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SILU: tl.constexpr,
                      BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_F32: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    """Program p: row tile p % cdiv(M, BLOCK_M), column tile p // cdiv(M, BLOCK_M). With SILU, W is a
    merged gate_up weight [2N, K]: the program also takes the up rows N further and writes
    silu(gate) * up."""
    num_m = tl.cdiv(M, BLOCK_M)
    pid = tl.program_id(0)
    rows = (pid % num_m) * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = (pid // num_m) * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    w_rows = w_ptr + tl.where(col_ok, cols, 0).to(tl.int64)[:, None] * stride_wn
    # Rows past M read row (r mod M), not one shared row: H100, 2026-11-26, with every padding row on
    # row 0 the kernel slowed by ~1.2 us per 8 padding rows (qkv at M = 72 with 128-row tiles: 14.7 us
    # against 5.3 at M = 128), as every program hammered the same line.
    x_rows = x_ptr + (rows % M).to(tl.int64)[:, None] * stride_xm
    acc, acc_up = accumulate_tile(x_rows, row_ok, w_rows, w_rows + N * stride_wn, K, False, EVEN_K, SILU,
                                  BLOCK_M, BLOCK_N, BLOCK_K, DOT_F32, PRECISION, USE_PDL)
    store_tile(out_ptr + rows.to(tl.int64)[:, None] * stride_om, cols, row_ok, col_ok, acc, acc_up, bias_ptr, N,
               HAS_BIAS, SILU)


def default_config(num_rows: int, n: int, k: int, silu: bool = False) -> dict:
    """Tiles for a shape the sweep did not cover: 64 x 64 up to 64 rows, else 128 x 64; BLOCK_K 64;
    4 stages (3 with SiLU's two weight tiles)."""
    block_m = 64 if num_rows <= 64 else 128
    return dict(BLOCK_M=block_m, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=3 if silu else 4)


@functools.cache
def _file_configs(path: str) -> dict:
    """A table file as {(N, K, silu): [(largest M, config or None), ...]}."""
    with open(path) as f:
        raw = json.load(f)
    return {tuple(int(v) for v in key.split(",")): [(int(m), cfg and dict(cfg)) for m, cfg in rows]
            for key, rows in raw.items()}


@functools.cache
def _device_name(index: int | None) -> str:
    return torch.cuda.get_device_name(index)   # None: the current device


def device_table(device: torch.device) -> dict:
    """The config table for a CUDA device: ENGINE_TILE_GEMM_CONFIGS's file if set, else the one
    DEVICE_TABLES ships for its name, else {} (no table: cuBLAS everywhere)."""
    path = os.environ.get("ENGINE_TILE_GEMM_CONFIGS")
    if not path:
        name = _device_name(device.index)
        files = [file for key, file in DEVICE_TABLES.items() if key in name]
        if not files:
            return {}
        path = os.path.join(os.path.dirname(os.path.abspath(__file__)), files[0])
    return _file_configs(path)


def config_for(num_rows: int, n: int, k: int, silu: bool, device: torch.device) -> dict | None:
    """The tile config for x [num_rows, k] @ W[n (x2 with silu), k]^T on `device`. A shape the
    device's table holds: the entry of the smallest M bucket >= num_rows, None where cuBLAS won or
    past the last bucket. A shape it does not hold: `default_config` (for direct callers; the
    engine's dispatch asks `winning_config` instead). Off CUDA: CPU_CONFIG."""
    if device.type != "cuda":
        return dict(CPU_CONFIG)
    buckets = device_table(device).get((n, k, int(silu)))
    if buckets is None:
        return default_config(num_rows, n, k, silu)
    return _bucket_config(buckets, num_rows)


def _bucket_config(buckets: list, num_rows: int) -> dict | None:
    """A copy of the config of the smallest M bucket >= num_rows; None where cuBLAS won or past the last."""
    for max_rows, cfg in buckets:
        if num_rows <= max_rows:
            return cfg and dict(cfg)
    return None


def winning_config(x: torch.Tensor, weight: torch.Tensor, silu: bool = False) -> dict | None:
    """The config the engine runs x @ weight^T with, or None for cuBLAS: on CUDA, the device table's
    entry for this shape and x's rows (it was timed faster than cuBLAS there), None where cuBLAS won
    or the table lacks the shape; on the CPU (tests) CPU_CONFIG. Pass it on to `tile_gemm(config=)`."""
    if x.device.type != "cuda":
        return dict(CPU_CONFIG)
    n = weight.shape[0] // 2 if silu else weight.shape[0]
    buckets = device_table(x.device).get((n, weight.shape[1], int(silu)))
    return None if buckets is None else _bucket_config(buckets, x.shape[0])


def tile_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              config: dict | None = None, silu: bool = False) -> torch.Tensor:
    """x [M, K], weight [N, K], bias [N] or None, one dtype with unit last stride, M <= MAX_ROWS
    -> out [M, N] in x's dtype (float32 accumulation). silu=True: weight is a merged gate_up [2I, K]
    (bias [2I]) and the result is silu(gate) * up [M, I]; config's BLOCK_N counts one of the two."""
    num_rows, n, k = check_gemm_inputs(x, weight, silu, MAX_ROWS)
    out = torch.empty(num_rows, n, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    cfg = config or config_for(num_rows, n, k, silu, x.device)
    if cfg is None:
        raise ValueError(f"no tile config for M={num_rows}, N={n}, K={k} (cuBLAS won there): ask `winning_config` first")
    grid = (triton.cdiv(num_rows, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"]),)
    cpu = x.device.type == "cpu"
    _tile_gemm_kernel[grid](
        x, weight, bias if bias is not None else weight, out, num_rows, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0, SILU=silu,
        DOT_F32=cpu, PRECISION="ieee" if cpu or x.dtype == torch.float32 else "tf32", **cfg, **pdl_kwargs(x))
    return out
