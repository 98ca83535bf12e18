"""cuBLAS's default GEMM against PyTorch TunableOp's pick on a model's projection shapes.

`python -m engine.bench tunableop [--preset qwen3-8b] [--rows 64 128 192 256] [--output FILE]`
TunableOp (`torch.cuda.tunable`) times cuBLASLt's best heuristic algorithms for each GEMM shape and
keeps the fastest. Each shape x [M, K] @ W[N, K]^T in bf16 is timed with `triton.testing.do_bench`
(L2 flushed between calls) with the default, then tuned once and timed again; the outputs must match.
"""
from __future__ import annotations

import argparse
import time

import torch
import torch.nn.functional as F

from engine.bench.common import report
from models.presets import PRESETS


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="qwen3-8b", choices=sorted(PRESETS))
    parser.add_argument("--rows", type=int, nargs="+", default=[64, 128, 192, 256])
    parser.add_argument("--output", default=None)


def projection_shapes(hf_config) -> dict[str, tuple[int, int]]:
    """(N, K) of each projection of one decoder layer and of the LM head."""
    hidden, inter = hf_config.hidden_size, hf_config.intermediate_size
    head_dim = getattr(hf_config, "head_dim", None) or hidden // hf_config.num_attention_heads
    q, kv = hf_config.num_attention_heads * head_dim, hf_config.num_key_value_heads * head_dim
    return {"qkv": (q + 2 * kv, hidden), "o": (hidden, q), "gate_up": (2 * inter, hidden),
            "down": (hidden, inter), "lm_head": (hf_config.vocab_size, hidden)}


def main(args: argparse.Namespace) -> dict:
    from triton.testing import do_bench

    shapes = projection_shapes(PRESETS[args.preset]())
    gen = torch.Generator(device="cuda").manual_seed(0)
    weights = {name: torch.randn(n, k, device="cuda", generator=gen, dtype=torch.bfloat16) * 0.02
               for name, (n, k) in shapes.items()}
    cases = [(name, m, torch.randn(m, shapes[name][1], device="cuda", generator=gen, dtype=torch.bfloat16))
             for name in shapes for m in args.rows]
    default = [(F.linear(x, weights[name]), do_bench(lambda: F.linear(x, weights[name])) * 1000)
               for name, _, x in cases]
    tunable = torch.cuda.tunable
    tunable.enable(True)
    tunable.tuning_enable(True)
    start = time.perf_counter()
    for name, _, x in cases:
        F.linear(x, weights[name])
    torch.cuda.synchronize()
    tuning_s = time.perf_counter() - start
    tunable.tuning_enable(False)
    rows = []
    for (name, m, x), (want, default_us) in zip(cases, default):
        got = F.linear(x, weights[name])
        tuned_us = do_bench(lambda: F.linear(x, weights[name])) * 1000
        max_diff = (got.float() - want.float()).abs().max().item()
        rows.append({"proj": name, "M": m, "default_us": round(default_us, 1), "tuned_us": round(tuned_us, 1),
                     "speedup": round(default_us / tuned_us, 3), "max_abs_diff": max_diff})
        print(f"{args.preset} {name:8s} M={m:4d}: default {default_us:7.1f} us, TunableOp {tuned_us:7.1f} us "
              f"({default_us / tuned_us:.3f}x), max |diff| {max_diff:.3g}")
    tunable.enable(False)
    result = {"bench": "tunableop", "preset": args.preset, "tuning_s": round(tuning_s, 2), "rows": rows}
    report(result, args)
    return result
