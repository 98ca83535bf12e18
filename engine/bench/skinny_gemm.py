"""The decode projections at small batch: the Triton skinny GEMM against cuBLAS (F.linear).

`python -m engine.bench skinny_gemm [--output results.json]`
Shapes are the projections of Qwen3-0.6B and Qwen3-8B (qkv, o, gate_up, down, lm_head). Each call is timed as a CUDA-graph replay (as the engine runs decode) over enough copies of
the weight that none stays in L2 (as in the model, where every layer reads new weights). The skinny
kernel is checked against F.linear before it is timed. `--sweep` also times every tile config at
M = 1 and reports the best one next to the default heuristic's.
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


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--sweep", action="store_true", help="also time every tile config at M = 1")
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
    weights = [torch.randn(n, k, device="cuda", dtype=torch.bfloat16) / k ** 0.5 for _ in range(copies)]
    return torch.randn(num_rows, k, device="cuda", dtype=torch.bfloat16), weights


def main(args: argparse.Namespace) -> dict:
    skinny = load("skinny_gemm")
    rows = []
    for name, (n, k) in SHAPES.items():
        for num_rows in ROWS:
            x, weights = _case(n, k, num_rows)
            err = (skinny.skinny_gemm(x, weights[0]).float() - F.linear(x, weights[0]).float()).abs().max().item()
            if err > 0.05:
                raise AssertionError(f"{name} M={num_rows}: skinny GEMM differs from F.linear by {err}")
            t_cublas = graph_us([lambda w=w: F.linear(x, w) for w in weights])
            t_skinny = graph_us([lambda w=w: skinny.skinny_gemm(x, w) for w in weights])
            row = dict(shape=name, n=n, k=k, m=num_rows, cublas_us=round(t_cublas, 2), skinny_us=round(t_skinny, 2),
                       skinny_tb_s=round(n * k * 2 / t_skinny / 1e6, 2), speedup=round(t_cublas / t_skinny, 3),
                       config=skinny.config_for(n, k, x.device))
            if args.sweep and num_rows == 1:
                row["sweep_best"] = _sweep(skinny, x, weights)
            print(row, flush=True)
            rows.append(row)
            del weights
    if args.output:
        with open(args.output, "w") as f:
            json.dump(rows, f, indent=1)
    return {"rows": rows}


def _sweep(skinny, x, weights) -> dict:
    best = None
    for cfg in SWEEP:
        try:
            t = graph_us([lambda w=w: skinny.skinny_gemm(x, w, config=cfg) for w in weights])
        except Exception as exc:  # noqa: BLE001 - a config may not fit in shared memory
            print("  config failed:", cfg, type(exc).__name__)
            continue
        if best is None or t < best["us"]:
            best = dict(cfg, us=round(t, 2))
    return best
