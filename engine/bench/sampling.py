"""The sampling kernel (Gumbel race) at the decode batch sizes, with lg2.approx logs and with exact ones.

`python -m engine.bench sampling [--rows 1 16 64 128 256] [--vocab-size 151936] [--output results.json]`
bf16 logits [M, vocab], temperature 0.6, each call timed as a CUDA-graph replay (`skinny_gemm.graph_us`).
One row per M: exact_us (tl.log2), fast_us (the default on CUDA: lg2.approx), and the share of rows
where both drew the same token (the scores differ by the logs' rounding only).
"""
from __future__ import annotations

import argparse

import torch

from engine.bench.common import report
from engine.bench.skinny_gemm import graph_us


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--rows", type=int, nargs="+", default=[1, 16, 64, 128, 256])
    parser.add_argument("--vocab-size", type=int, default=151936)
    parser.add_argument("--output", default=None)


def main(args: argparse.Namespace) -> dict:
    from engine.sampling_kernel import gumbel_sample

    rows = []
    for num_rows in args.rows:
        gen = torch.Generator(device="cuda").manual_seed(num_rows)
        logits = (torch.randn(num_rows, args.vocab_size, device="cuda", generator=gen) * 3).to(torch.bfloat16)
        keys = torch.randint(1 << 62, (num_rows,), device="cuda", generator=gen)
        temperature = torch.full((num_rows,), 0.6, device="cuda")
        exact_us, fast_us = (graph_us([lambda f=fast: gumbel_sample(logits, keys, temperature, fast_log=f)] * 10)
                             for fast in (False, True))
        same = (gumbel_sample(logits, keys, temperature, fast_log=False)
                == gumbel_sample(logits, keys, temperature, fast_log=True)).float().mean().item()
        rows.append({"M": num_rows, "exact_us": round(exact_us, 1), "fast_us": round(fast_us, 1),
                     "same_token": round(same, 4)})
        print(f"sampling M={num_rows:4d} x {args.vocab_size}: exact logs {exact_us:7.1f} us, "
              f"lg2.approx {fast_us:7.1f} us, same token on {same:.1%} of rows")
    result = {"bench": "sampling", "vocab_size": args.vocab_size, "rows": rows}
    report(result, args)
    return result
