"""The decode projections at small batch: the Triton skinny GEMM against cuBLAS (F.linear).

`python -m engine.bench skinny_gemm [--sweep] [--cases TEXT] [--output results.json]`
Shapes are the projections of Qwen3-0.6B and Qwen3-8B (qkv, o, gate_up, down, lm_head). Each call is
timed as a CUDA-graph replay (as the engine runs decode) over enough copies of the weight that none stays in L2
(as in the model, where every layer reads new weights). Every kernel is checked against the torch
result before it is timed. One table, one row per (case, M):

- cublas_us: F.linear.
- skinny_us: the skinny GEMM with its default config.
- speedup: cublas_us / skinny_us; TB/s: the weight read at skinny_us.
- config: the default config (BLOCK_N x BLOCK_K, warps, stages) of the skinny GEMM.
- sweep: with `--sweep`, at M = 1, the best config of the skinny GEMM over SWEEP (BLOCK_N 16 to 128,
  so the 0.6B shapes' small tiles are covered) and its time in us (the configs that do not compile,
  e.g. too much shared memory, are listed in the JSON only).
"""
from __future__ import annotations

import argparse
import itertools
import json
import statistics

import torch
import torch.nn.functional as F

from models.layers.ops import load

SHAPES = {  # name: (N, K)
    "0.6b qkv": (4096, 1024), "0.6b o": (1024, 2048), "0.6b gate_up": (6144, 1024), "0.6b down": (1024, 3072),
    "0.6b lm_head": (151936, 1024), "8b qkv": (6144, 4096), "8b o": (4096, 4096), "8b gate_up": (24576, 4096),
    "8b down": (4096, 12288), "8b lm_head": (151936, 4096),
}
ROWS = (1, 2, 4, 8, 16)
SWEEP = [dict(BLOCK_N=bn, BLOCK_K=bk, num_warps=w, num_stages=s)
         for bn, bk, w, s in itertools.product((16, 32, 64, 128), (128, 256), (4, 8), (3, 4))]
ROTATE_BYTES = 512 << 20
DEVICE = "cuda"
COLUMNS = (("case", 14), ("M", 3), ("cublas_us", 10), ("skinny_us", 10), ("speedup", 8), ("TB/s", 6),
           ("config", 14), ("sweep", 22))


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true", help="also time every tile config at M = 1")
    parser.add_argument("--cases", default=None,
                        help="only the cases whose name contains this text (e.g. '0.6b', 'lm_head')")
    parser.add_argument("--rows", type=int, nargs="+", default=list(ROWS), help="the M values to time (<= 64)")
    parser.add_argument("--output", default=None)


def graph_us(calls) -> float:
    """Median microseconds per call of `calls` (one kernel sequence each), replayed as one CUDA graph."""
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for call in calls:
            call()
    torch.cuda.current_stream().wait_stream(stream)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for call in calls:
            call()
    times = []
    for _ in range(7):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for _ in range(5):
            graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) * 1000 / (5 * len(calls)))
    return statistics.median(times[2:])


def _case(n, k, num_rows):
    copies = max(2, min(64, ROTATE_BYTES // (n * k * 2)))
    weights = [torch.randn(n, k, device=DEVICE, dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]
    return torch.randn(num_rows, k, device=DEVICE, dtype=torch.bfloat16), weights


def _config_str(cfg: dict) -> str:
    return f"{cfg['BLOCK_N']}x{cfg['BLOCK_K']} w{cfg['num_warps']} s{cfg['num_stages']}"


def _print_row(row: dict) -> None:
    cells = {**row, "case": row["shape"], "M": row["m"], "TB/s": row["tb_s"], "config": _config_str(row["config"]),
             "sweep": (f"{_config_str(row['sweep_best'])}: {row['sweep_best']['us']}"
                       if row.get("sweep_best") else "")}
    print(_line(["" if cells.get(name) is None else str(cells[name]) for name, _ in COLUMNS]), flush=True)


def _line(cells: list[str]) -> str:
    """One table line: the case left-aligned, the rest right-aligned, in COLUMNS' widths."""
    return "  ".join(f"{cell:<{width}}" if i == 0 else f"{cell:>{width}}"
                     for i, (cell, (_, width)) in enumerate(zip(cells, COLUMNS)))


def _check(name, num_rows, got, want) -> None:
    err = ((got.float() - want.float()).abs().max() / want.float().abs().max().clamp_min(1e-6)).item()
    if err > 0.02:
        raise AssertionError(f"{name} M={num_rows}: the Triton result differs from torch's by {err:.3g} "
                             "(relative)")


def _row(name, n, k, num_rows, cublas_us, skinny_us, config) -> dict:
    return dict(shape=name, n=n, k=k, m=num_rows, cublas_us=round(cublas_us, 2), skinny_us=round(skinny_us, 2),
                speedup=round(cublas_us / skinny_us, 3), tb_s=round(n * k * 2 / skinny_us / 1e6, 2), config=config)


def _plain_row(skinny, name, num_rows, sweep) -> dict:
    n, k = SHAPES[name]
    x, weights = _case(n, k, num_rows)
    _check(name, num_rows, skinny.skinny_gemm(x, weights[0]), F.linear(x, weights[0]))
    t_cublas = graph_us([lambda w=w: F.linear(x, w) for w in weights])
    t_skinny = graph_us([lambda w=w: skinny.skinny_gemm(x, w) for w in weights])
    row = _row(name, n, k, num_rows, t_cublas, t_skinny, skinny.config_for(n, k, x.device, num_rows=num_rows))
    if sweep and num_rows == 1:
        row["sweep_best"] = _sweep(SWEEP, lambda cfg: [lambda w=w: skinny.skinny_gemm(x, w, config=cfg)
                                                       for w in weights])
    return row


def main(args: argparse.Namespace) -> dict:
    skinny = load("skinny_gemm")
    print(_line([name for name, _ in COLUMNS]), flush=True)
    rows = []
    for name in [name for name in SHAPES if args.cases is None or args.cases in name]:
        for num_rows in args.rows:
            row = _plain_row(skinny, name, num_rows, args.sweep)
            _print_row(row)
            rows.append(row)
            torch.cuda.empty_cache()
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)
    return {"rows": rows}


def _sweep(configs, calls_for) -> dict | None:
    """The fastest of `configs` as dict(config, us=..., failed=[configs that did not run, with why]);
    `calls_for(cfg)` gives the calls to time."""
    best, failed = None, []
    for cfg in configs:
        try:
            t = graph_us(calls_for(cfg))
        except Exception as exc:  # noqa: BLE001 - a config may not fit in shared memory
            failed.append(f"{_config_str(cfg)}: {type(exc).__name__}")
            continue
        if best is None or t < best["us"]:
            best = dict(cfg, us=round(t, 2))
    return best and dict(best, failed=failed)
