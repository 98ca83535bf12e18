"""The decode projections at 17-256 rows: the Triton tile GEMM, swept over its tile configs, against
cuBLAS (F.linear) and cuBLASLt.

`python -m engine.bench tile_gemm [--rows 32 64 128 192 256] [--cases TEXT] [--write-configs FILE]`
Shapes are those of engine/bench/skinny_gemm.py, plus "silu" cases: the gate_up projection with
SiLU-and-mul in the GEMM, against cuBLAS followed by the engine's SiLU-and-mul kernel. Timing as
there: CUDA-graph replays over copies of the weight that do not stay in L2; each config is checked
against torch before it is timed. The sweep per (case, M): BLOCK_M x BLOCK_N x BLOCK_K at 4 warps,
then warps and stages around the best. One line per (case, M):

- cublas_us, cublaslt_us: F.linear with torch's default BLAS library and with cuBLASLt;
- tile_us and its config; speedup: the better cuBLAS time / tile_us; TB/s: weight read at tile_us.

`--table FILE` skips the sweep: at each M it times the configs FILE holds for the shape (at any M)
and the default, so a table swept at a few M can be refined to every graph batch size.
`--write-configs FILE` writes the winners as the JSON table models/layers/ops/tile_gemm.py reads
from ENGINE_TILE_GEMM_CONFIGS (null where cuBLAS was faster), for an engine run with this sweep.
"""
from __future__ import annotations

import argparse
import itertools
import json
import os

import torch
import torch.nn.functional as F

from engine.bench.skinny_gemm import SHAPES, _case, _check, graph_us
from models.layers.ops import apply_silu_and_mul, load

ROWS = (32, 64, 128, 192, 256)
CASES = {**{name: (n, k, False) for name, (n, k) in SHAPES.items()},
         "0.6b gate_up silu": (3072, 1024, True), "8b gate_up silu": (12288, 4096, True)}
SHARED_MEMORY_BYTES = 220 << 10


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--cases", nargs="+", default=None, help="only the cases whose name contains one of these texts")
    parser.add_argument("--rows", type=int, nargs="+", default=list(ROWS), help="the M values to time (<= 256)")
    parser.add_argument("--write-configs", default=None, help="write the winners as a config table (JSON)")
    parser.add_argument("--table", default=None,
                        help="no sweep: time the configs this table (a --write-configs file) holds for the shape, "
                             "at each M (engine: what the table picks there)")
    parser.add_argument("--output", default=None)


def _fits(cfg: dict, silu: bool) -> bool:
    weight_rows = cfg["BLOCK_N"] * (2 if silu else 1)
    return (cfg["BLOCK_M"] + weight_rows) * cfg["BLOCK_K"] * 2 * cfg["num_stages"] <= SHARED_MEMORY_BYTES


def _first_configs(num_rows: int, silu: bool) -> list[dict]:
    block_ms = [bm for bm in (16, 32, 64, 128) if bm <= max(16, num_rows) and bm * 8 >= num_rows]
    configs = [dict(BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=4, num_stages=3)
               for bm, bn, bk in itertools.product(block_ms, (32, 64, 128, 256), (64, 128))]
    return [cfg for cfg in configs if _fits(cfg, silu)]


def _second_configs(best: dict, silu: bool) -> list[dict]:
    configs = [dict(best, num_warps=w, num_stages=s) for w, s in itertools.product((4, 8), (2, 3, 4, 5))]
    return [cfg for cfg in configs if _fits(cfg, silu) and cfg != best]


def _time_configs(configs, calls_for, best=None):
    for cfg in configs:
        try:
            t = graph_us(calls_for(cfg))
        except Exception:  # noqa: BLE001 - a config may not compile (registers, shared memory)
            continue
        if best is None or t < best[1]:
            best = (cfg, t)
    return best


def _cublas_us(x, weights, silu: bool, library: str) -> float:
    previous = torch.backends.cuda.preferred_blas_library()
    torch.backends.cuda.preferred_blas_library(library)
    try:
        if silu:
            return graph_us([lambda w=w: apply_silu_and_mul(F.linear(x, w)) for w in weights])
        return graph_us([lambda w=w: F.linear(x, w) for w in weights])
    finally:
        torch.backends.cuda.preferred_blas_library(previous)


def _row(tile, name: str, num_rows: int, table: str | None = None) -> dict:
    """One (case, M): cuBLAS, cuBLASLt and the tile GEMM's best config (swept, or the table's pick)."""
    n, k, silu = CASES[name]
    x, weights = _case(2 * n if silu else n, k, num_rows)
    want = apply_silu_and_mul(F.linear(x, weights[0])) if silu else F.linear(x, weights[0])
    cublas = _cublas_us(x, weights, silu, "cublas")
    cublaslt = _cublas_us(x, weights, silu, "cublaslt")

    def calls_for(cfg):
        _check(name, num_rows, tile.tile_gemm(x, weights[0], config=cfg, silu=silu), want)
        return [lambda w=w: tile.tile_gemm(x, w, config=cfg, silu=silu) for w in weights]

    picked = None
    if table is None:
        best = _time_configs(_first_configs(num_rows, silu), calls_for)
        best = _time_configs(_second_configs(best[0], silu), calls_for, best)
    else:   # no sweep: the table's pick for this M, its configs for the other M, the default
        picked = tile.config_for(num_rows, n, k, silu, x.device)
        best = _time_configs(_table_configs(tile, n, k, silu, num_rows, picked, x.device), calls_for)
    cfg, tile_us = best
    return dict(case=name, n=n, k=k, silu=silu, m=num_rows, cublas_us=round(cublas, 2),
                cublaslt_us=round(cublaslt, 2), tile_us=round(tile_us, 2),
                speedup=round(min(cublas, cublaslt) / tile_us, 3),
                tb_s=round(weights[0].numel() * 2 / tile_us / 1e6, 2), config=cfg,
                engine_uses="tile" if table is None or picked else "cublas", table_pick=picked)


def _table_configs(tile, n: int, k: int, silu: bool, num_rows: int, picked: dict | None, device) -> list[dict]:
    """The configs the device's table (here --table's) holds for (n, k, silu) at any M, the pick for
    this M first (None: cuBLAS), and the default config, without repeats."""
    configs = [picked] + [cfg for _, cfg in tile.device_table(device).get((n, k, int(silu)), ())] + [
        tile.default_config(num_rows, n, k, silu)]
    unique = []
    for cfg in configs:
        if cfg is not None and cfg not in unique:
            unique.append(cfg)
    return unique


def _config_table(rows: list[dict]) -> dict:
    """{"N,K,silu": [[M, config or None], ...]}: the winner per M bucket, None where cuBLAS (default
    library, the engine's) was faster; neighbouring buckets with the same winner are merged."""
    table: dict[str, list] = {}
    for row in sorted(rows, key=lambda r: r["m"]):
        key = f"{row['n']},{row['k']},{int(row['silu'])}"
        table.setdefault(key, []).append([row["m"], row["config"] if row["tile_us"] < row["cublas_us"] else None])
    return {key: merge_buckets(buckets) for key, buckets in table.items()}


def merge_buckets(buckets: list) -> list:
    """[[largest M, config], ...] in increasing M with each run of equal configs kept as its last bucket."""
    merged = []
    for i, (max_rows, cfg) in enumerate(buckets):
        if i + 1 == len(buckets) or buckets[i + 1][1] != cfg:
            merged.append([max_rows, cfg])
    return merged


def main(args: argparse.Namespace) -> dict:
    tile = load("tile_gemm")
    if args.table:
        os.environ["ENGINE_TILE_GEMM_CONFIGS"] = args.table
    print(f"{'case':<18} {'M':>4} {'cublas_us':>9} {'cublaslt_us':>11} {'tile_us':>8} {'speedup':>7} {'TB/s':>5}  config",
          flush=True)
    rows = []
    for name in [name for name in CASES if args.cases is None or any(text in name for text in args.cases)]:
        for num_rows in args.rows:
            row = _row(tile, name, num_rows, args.table)
            cfg = row["config"]
            print(f"{name:<18} {num_rows:>4} {row['cublas_us']:>9} {row['cublaslt_us']:>11} {row['tile_us']:>8} "
                  f"{row['speedup']:>7} {row['tb_s']:>5}  {cfg['BLOCK_M']}x{cfg['BLOCK_N']}x{cfg['BLOCK_K']} "
                  f"w{cfg['num_warps']} s{cfg['num_stages']} (engine: {row['engine_uses']})", flush=True)
            rows.append(row)
            torch.cuda.empty_cache()
    if args.write_configs:
        with open(args.write_configs, "w") as f:
            json.dump(_config_table(rows), f, indent=1)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)
    return {"rows": rows}
