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
holds a config for the shape and M (`wins`); elsewhere cuBLAS. ENGINE_TILE_GEMM_CONFIGS may name
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
MAX_SPLIT_TILES = 1 << 16   # tile counters of split-K launches (256 KiB per device)
SHARED_MEMORY_BYTES = 220 << 10
# The table shipped per GPU: a device whose name holds the key reads the file (next to this module).
# A table maps "N,K,silu" to [[largest M, config or null], ...] in increasing M; null: cuBLAS was faster.
DEVICE_TABLES = {"H100": "tile_configs_h100.json"}
CPU_CONFIG = dict(BLOCK_M=16, BLOCK_N=16, BLOCK_K=32, num_warps=4, num_stages=1)


@triton.jit(do_not_specialize=["M"])   # one variant for every batch size
def _tile_gemm_kernel(x_ptr, w_ptr, bias_ptr, out_ptr, part_ptr, count_ptr, M, N, K, stride_xm, stride_wn,
                      stride_om, HAS_BIAS: tl.constexpr, EVEN_K: tl.constexpr, SILU: tl.constexpr,
                      SPLIT_K: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                      DOT_F32: tl.constexpr, PRECISION: tl.constexpr, USE_PDL: tl.constexpr):
    """Program p: row tile p % num_m, then split (p // num_m) % SPLIT_K, column tile p // (num_m *
    SPLIT_K). With SILU, W is a merged gate_up weight [2N, K]: the program also takes the up rows N
    further and writes silu(gate) * up. With SPLIT_K > 1 the program sums its split's share of K
    into part_ptr and the tile's last program to finish (count_ptr's counter says which) adds the
    SPLIT_K sums in split order and writes the tile."""
    num_m = tl.cdiv(M, BLOCK_M)
    pid = tl.program_id(0)
    m_tile = pid % num_m
    split = (pid // num_m) % SPLIT_K
    n_tile = pid // (num_m * SPLIT_K)
    rows = m_tile * BLOCK_M + tl.arange(0, BLOCK_M)
    cols = n_tile * BLOCK_N + tl.arange(0, BLOCK_N)
    row_ok = rows < M
    col_ok = cols < N
    w_rows = w_ptr + tl.where(col_ok, cols, 0).to(tl.int64)[:, None] * stride_wn
    # Rows past M read row (r mod M), not one shared row: H100, 2026-11-26, with every padding row on
    # row 0 the kernel slowed by ~1.2 us per 8 padding rows (qkv at M = 72 with 128-row tiles: 14.7 us
    # against 5.3 at M = 128), as every program hammered the same line.
    x_rows = x_ptr + (rows % M).to(tl.int64)[:, None] * stride_xm
    k_len = tl.cdiv(tl.cdiv(K, BLOCK_K), SPLIT_K) * BLOCK_K
    k_begin = split * k_len
    k_end = tl.minimum(k_begin + k_len, K)
    acc, acc_up = accumulate_tile(x_rows, row_ok, w_rows, w_rows + N * stride_wn, k_begin, k_end, False, EVEN_K,
                                  SILU, BLOCK_M, BLOCK_N, BLOCK_K, DOT_F32, PRECISION, USE_PDL)
    out_rows = out_ptr + rows.to(tl.int64)[:, None] * stride_om
    if SPLIT_K == 1:
        store_tile(out_rows, cols, row_ok, col_ok, acc, acc_up, bias_ptr, N, HAS_BIAS, SILU)
    else:
        _add_splits(part_ptr, count_ptr + n_tile * num_m + m_tile, split, rows, cols, row_ok, col_ok, M, N, acc,
                    acc_up, out_rows, bias_ptr, HAS_BIAS, SILU, SPLIT_K)


@triton.jit
def _add_splits(part_ptr, counter, split, rows, cols, row_ok, col_ok, M, N, acc, acc_up, out_rows, bias_ptr,
                HAS_BIAS: tl.constexpr, SILU: tl.constexpr, SPLIT_K: tl.constexpr):
    """Split-K's end: store this split's float32 sums (acc, and acc_up with SILU) at part_ptr
    [SPLIT_K, 1 or 2, M, N]; the tile's last program (the counter's last increment) resets the
    counter for the next launch, adds the SPLIT_K sums in split order (the same rounding whichever
    program is last) and writes the tile."""
    planes: tl.constexpr = 2 if SILU else 1
    plane = M.to(tl.int64) * N
    offs = rows.to(tl.int64)[:, None] * N + cols[None, :]
    mask = row_ok[:, None] & col_ok[None, :]
    mine = part_ptr + split * planes * plane + offs
    tl.store(mine, acc, mask=mask)
    if SILU:
        tl.store(mine + plane, acc_up, mask=mask)
    tl.debug_barrier()   # every thread's stores come before the (release) increment
    if tl.atomic_add(counter, 1, sem="acq_rel", scope="gpu") == SPLIT_K - 1:
        tl.store(counter, 0)   # ready for the next launch (CUDA-graph replays reuse it)
        acc = tl.zeros_like(acc)
        acc_up = tl.zeros_like(acc_up)
        for s in tl.static_range(SPLIT_K):
            part = part_ptr + s * planes * plane + offs
            acc += tl.load(part, mask=mask, other=0.0, cache_modifier=".cg")
            if SILU:
                acc_up += tl.load(part + plane, mask=mask, other=0.0, cache_modifier=".cg")
        store_tile(out_rows, cols, row_ok, col_ok, acc, acc_up, bias_ptr, N, HAS_BIAS, SILU)


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
    engine's dispatch asks `wins` first). Off CUDA: CPU_CONFIG."""
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


def wins(x: torch.Tensor, weight: torch.Tensor, silu: bool = False) -> bool:
    """Whether the engine should take the tile GEMM for x @ weight^T: on CUDA, the device's table
    holds a config for this shape and x's rows (it was timed faster than cuBLAS there); on the CPU
    (tests) always."""
    if x.device.type != "cuda":
        return True
    n = weight.shape[0] // 2 if silu else weight.shape[0]
    buckets = device_table(x.device).get((n, weight.shape[1], int(silu)))
    return buckets is not None and _bucket_config(buckets, x.shape[0]) is not None


def tile_gemm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None,
              config: dict | None = None, silu: bool = False) -> torch.Tensor:
    """x [M, K], weight [N, K], bias [N] or None, one dtype with unit last stride, M <= MAX_ROWS
    -> out [M, N] in x's dtype (float32 accumulation). silu=True: weight is a merged gate_up [2I, K]
    (bias [2I]) and the result is silu(gate) * up [M, I]; config's BLOCK_N counts one of the two."""
    num_rows, n, k = check_gemm_inputs(x, weight, silu, MAX_ROWS)
    out = torch.empty(num_rows, n, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    cfg = dict(config or config_for(num_rows, n, k, silu, x.device) or {})
    if not cfg:
        raise ValueError(f"no tile config for M={num_rows}, N={n}, K={k} (cuBLAS won there): check `wins` first")
    split_k = cfg.pop("SPLIT_K", 1)
    num_tiles = triton.cdiv(num_rows, cfg["BLOCK_M"]) * triton.cdiv(n, cfg["BLOCK_N"])
    part, counts = out, out   # placeholders without split-K
    if split_k > 1:
        part = torch.empty(split_k * (2 if silu else 1) * num_rows * n, dtype=torch.float32, device=x.device)
        counts = split_counters(x.device, num_tiles)
    cpu = x.device.type == "cpu"
    _tile_gemm_kernel[(num_tiles * split_k,)](
        x, weight, bias if bias is not None else weight, out, part, counts, num_rows, n, k,
        x.stride(0), weight.stride(0), out.stride(0),
        HAS_BIAS=bias is not None, EVEN_K=k % cfg["BLOCK_K"] == 0, SILU=silu, SPLIT_K=split_k,
        DOT_F32=cpu, PRECISION="ieee" if cpu or x.dtype == torch.float32 else "tf32", **cfg, **pdl_kwargs(x))
    return out


_COUNTERS: dict[torch.device, torch.Tensor] = {}


def split_counters(device: torch.device, num_tiles: int) -> torch.Tensor:
    """The device's split-K tile counters (int32, zero between launches: each tile's last program
    resets its own), made on first use. That first use must not be inside a CUDA-graph capture,
    where the zeroing would only happen on replay; the engine's warm-up runs every graph's step
    eagerly first."""
    counts = _COUNTERS.get(device)
    if counts is None:
        if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
            raise RuntimeError("the split-K counters are made on the first tile_gemm call, which must not be "
                               "inside a CUDA-graph capture: run the step once eagerly first")
        counts = _COUNTERS[device] = torch.zeros(MAX_SPLIT_TILES, dtype=torch.int32, device=device)
    if num_tiles > counts.numel():
        raise ValueError(f"split-K over {num_tiles} tiles: at most {counts.numel()}; take larger tiles")
    return counts
