"""The triton decode kernel's fixed cost per call: its time against the KV bytes it reads.

`python -m engine.bench decode_cost [--num-heads 16] [--output FILE]`
Each call is timed inside one CUDA graph of 20 back-to-back calls (as the model's layers run it,
so no graph-launch gap is counted), on batches of uniform and ragged contexts, plain (the cache
already holds the step's K/V) and as the engine runs it (the kernel stores the step's K/V and
applies q/k norm + rope). A least-squares fit of time = fixed_us + bytes / rate over the plain rows
says how much of a call is not streaming. Then the engine's case (128 x 610 with the K/V store
and rope) over tile configs and grid orders, and the compiled kernel's registers and shared memory.
"""
from __future__ import annotations

import argparse
import itertools
import json

import torch

from attention.ops import decode_attention as da
from attention.qk_rope import QKRope
from engine.bench.skinny_gemm import graph_us

DEVICE = "cuda"
BLOCK_SIZE = 16
CALLS = 20   # calls per CUDA graph, back to back
CASES = [(64, 1024), (128, 256), (128, 610), (128, 1024), (128, 2048), (256, 256), (256, 610), (256, 1024),
         (256, 2048), (32, 4096)]
RAGGED = [(256, (100, 1100)), (128, (600, 2000)), (64, (600, 2000))]


def add_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--num-heads", type=int, default=16)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--no-sweep", action="store_true", help="skip the config sweep of the engine's case")
    parser.add_argument("--output", default=None)


def make_inputs(lens: list[int], num_heads: int, num_kv_heads: int, head_size: int = 128) -> dict:
    """Random cache, block table, query and the step's K/V for requests of context `lens`."""
    batch = len(lens)
    blocks = [-(-n // BLOCK_SIZE) for n in lens]
    perm = torch.randperm(sum(blocks) + 1, device=DEVICE).int()
    table = torch.zeros(batch, max(blocks), dtype=torch.int32, device=DEVICE)
    start = 0
    for r, nb in enumerate(blocks):
        table[r, :nb] = perm[start:start + nb]
        start += nb
    cache = torch.randn(2, sum(blocks) + 1, BLOCK_SIZE, num_kv_heads, head_size, device=DEVICE, dtype=torch.bfloat16)
    seq_lens = torch.tensor(lens, dtype=torch.int32, device=DEVICE)
    last = (seq_lens - 1).long()
    slots = table.gather(1, (last // BLOCK_SIZE)[:, None]).squeeze(1).long() * BLOCK_SIZE + last % BLOCK_SIZE
    cos_sin = torch.randn(8192, head_size, device=DEVICE, dtype=torch.float32)
    rope = QKRope(positions=last, cos_sin_cache=cos_sin, q_norm_weight=torch.ones(head_size, device=DEVICE,
                  dtype=torch.bfloat16), k_norm_weight=torch.ones(head_size, device=DEVICE, dtype=torch.bfloat16),
                  eps=1e-6, apply=None)
    return dict(query=torch.randn(batch, num_heads, head_size, device=DEVICE, dtype=torch.bfloat16),
                kv_cache=cache, seq_lens=seq_lens, block_table=table,
                query_start_loc=torch.arange(batch + 1, dtype=torch.int32, device=DEVICE),
                key=torch.randn(batch, num_kv_heads, head_size, device=DEVICE, dtype=torch.bfloat16),
                value=torch.randn(batch, num_kv_heads, head_size, device=DEVICE, dtype=torch.bfloat16),
                slots=slots, rope=rope, bytes=sum(lens) * num_kv_heads * head_size * 2 * 2)


def call(inp: dict, engine_like: bool, config: dict | None):
    out = torch.empty_like(inp["query"])
    batch, num_heads, head_size = inp["query"].shape
    part_out = torch.empty(batch, num_heads, 1, head_size, device=DEVICE, dtype=torch.float32)
    part_lse = torch.empty(batch, num_heads, 1, device=DEVICE, dtype=torch.float32)
    new_kv = (inp["key"], inp["value"], inp["slots"]) if engine_like else None
    return lambda: da.decode_attention(inp["query"], inp["kv_cache"], out, inp["query_start_loc"], inp["seq_lens"],
                                       inp["block_table"], head_size ** -0.5, batch, 1, part_out, part_lse,
                                       config=config, new_kv=new_kv, qk_rope=inp["rope"] if engine_like else None)


def fit(rows: list[dict]) -> tuple[float, float]:
    """Least squares time_us = fixed_us + bytes / (rate TB/s * 1e6): (fixed_us, rate)."""
    xs, ys = [r["bytes"] / 1e6 for r in rows], [r["us"] for r in rows]
    n, mx, my = len(xs), sum(xs) / len(xs), sum(ys) / len(ys)
    slope = sum((x - mx) * (y - my) for x, y in zip(xs, ys)) / sum((x - mx) ** 2 for x in xs)
    return round(my - slope * mx, 2), round(1 / slope, 3)


def kernel_resources() -> list[dict]:
    found = []
    for cache in getattr(da._decode_kernel, "device_caches", {}).values():
        for kernel in cache[0].values():
            found.append(dict(n_regs=getattr(kernel, "n_regs", None), n_spills=getattr(kernel, "n_spills", None),
                              shared=getattr(kernel.metadata, "shared", None),
                              num_warps=getattr(kernel.metadata, "num_warps", None)))
    return found


def _lens(case) -> list[int]:
    batch, spec = case
    if isinstance(spec, tuple):
        gen = torch.Generator().manual_seed(batch)
        return torch.randint(spec[0], spec[1] + 1, (batch,), generator=gen).tolist()
    return [spec] * batch


def main(args: argparse.Namespace) -> dict:
    rows = []
    for case in CASES + RAGGED:
        inp = make_inputs(_lens(case), args.num_heads, args.num_kv_heads)
        for engine_like in (False, True):
            us = graph_us([call(inp, engine_like, None)] * CALLS)
            rows.append(dict(case=f"{case[0]}x{case[1]}", engine_like=engine_like, bytes=inp["bytes"], us=round(us, 2),
                             tb_s=round(inp["bytes"] / us / 1e6, 3)))
            print(json.dumps(rows[-1]), flush=True)
        del inp
    uniform = [r for r in rows if not r["engine_like"] and "(" not in r["case"]]
    fixed, rate = fit(uniform)
    fixed_e, rate_e = fit([r for r in rows if r["engine_like"] and "(" not in r["case"]])
    print(f"fit, plain: {fixed} us + bytes at {rate} TB/s; with K/V store + rope: {fixed_e} us at {rate_e} TB/s")
    inp = make_inputs([610] * 128, args.num_heads, args.num_kv_heads)
    sweep = []
    configs = [] if args.no_sweep else itertools.product((32, 64, 128), (2, 3, 4), (4, 8), (False, True))
    for block_n, stages, warps, heads_first in configs:
        cfg = dict(da.DECODE_CONFIGS["cuda"], BLOCK_N=block_n, num_stages=stages, num_warps=warps,
                   HEADS_FIRST=heads_first)
        try:
            us = graph_us([call(inp, True, cfg)] * CALLS)
        except Exception as exc:  # noqa: BLE001 - a config may not compile
            print(f"{cfg}: {type(exc).__name__}")
            continue
        sweep.append(dict(cfg, us=round(us, 2)))
    sweep.sort(key=lambda r: r["us"])
    for row in sweep[:8]:
        print("128x610 engine-like:", json.dumps(row))
    default = [r for r in sweep if all(r[k] == v for k, v in da.DECODE_CONFIGS["cuda"].items())]
    print("default:", json.dumps(default))
    resources = kernel_resources()
    print("kernels:", json.dumps(resources[:6]))
    result = dict(rows=rows, fit_plain=[fixed, rate], fit_engine_like=[fixed_e, rate_e], sweep=sweep,
                  resources=resources)
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=1)
    return result
