"""`python -m engine.bench attention --sweep LOG`: the tuning sweep of the triton backend's tile
shapes, split policy and block size (each row checked against torch_ref, decode rows timed as graph
replays; see engine/bench/attention.py for how a row is measured)."""
from __future__ import annotations

import itertools
import json
import time

import torch

from attention.backends import triton_attn
from attention.ops import decode_attention, prefill_attention
from attention.selector import load_backend
from engine.bench.attention import DEVICE, PREFILL_CASES, Case, logical_kv, measure, paged_inputs, reference


def sweep(shape: dict, log_path: str, seconds: float) -> None:
    """Tuning sweep of the triton backend's tile shapes, split policy and block size. Appends one
    JSON line per measurement to `log_path`; each decode row is timed as a graph replay."""
    backend = load_backend("triton")
    log = open(log_path, "a")
    rows: list[dict] = []

    def run(case, inputs, ref, tag):
        try:
            row = measure(backend, case, inputs, shape, ref, eager=False) | tag
        except Exception as e:  # a config that does not compile (e.g. too much shared memory)
            row = dict(case=case.name, error=repr(e)[:200]) | tag
        log.write(json.dumps(row) + "\n")
        log.flush()
        rows.append(row)
        return row

    def prepared(case, block_size):
        gen = torch.Generator(device=DEVICE).manual_seed(0)
        kv = logical_kv(case, shape, gen)
        ref = reference(case, kv, shape, gen)
        gen.manual_seed(1)
        return paged_inputs(case, kv, block_size, shape, gen), ref

    decode_default = dict(decode_attention.DECODE_CONFIGS["cuda_plain"])
    prefill_default = dict(prefill_attention.PREFILL_CONFIGS["cuda"])
    split_default = dict(triton_attn.SPLIT_POLICY)
    deadline = time.monotonic() + seconds
    for b, n in ((256, 1024), (1, 16384), (32, 16384)):
        case = Case("decode", b, n)
        inputs, ref = prepared(case, 16)
        for block_n, warps, stages in itertools.product((32, 64, 128), (4, 8), (2, 3, 4)):
            if time.monotonic() < deadline:
                cfg = dict(decode_default, BLOCK_N=block_n, num_warps=warps, num_stages=stages)
                decode_attention.DECODE_CONFIGS["cuda_plain"] = cfg   # the bench passes no K/V to store
                run(case, inputs, ref, dict(sweep="decode_config", config=cfg))
        decode_attention.DECODE_CONFIGS["cuda_plain"] = decode_default
        del inputs, ref
    for b, n in PREFILL_CASES:
        case = Case("prefill", b, n)
        inputs, ref = prepared(case, 16)
        for bm, bn, warps, stages in itertools.product((64, 128), (32, 64, 128), (4, 8), (2, 3, 4)):
            if time.monotonic() < deadline:
                prefill_attention.PREFILL_CONFIGS["cuda"] = dict(prefill_default, BLOCK_M=bm, BLOCK_N=bn,
                                                                 num_warps=warps, num_stages=stages)
                run(case, inputs, ref, dict(sweep="prefill_config", config=prefill_attention.PREFILL_CONFIGS["cuda"]))
        prefill_attention.PREFILL_CONFIGS["cuda"] = prefill_default
        del inputs, ref
    for b, n in ((1, 1024), (1, 16384), (32, 16384), (64, 1024)):
        case = Case("decode", b, n)
        inputs, ref = prepared(case, 16)
        for waves, min_len in itertools.product((1, 2, 4, 8), (64, 128, 256, 512, 1024)):
            if time.monotonic() < deadline:
                triton_attn.SPLIT_POLICY.update(waves=waves, min_split_len=min_len)
                run(case, inputs, ref, dict(sweep="split", waves=waves, min_split_len=min_len))
        triton_attn.SPLIT_POLICY.update(split_default)
        del inputs, ref
    for case in (Case("decode", 256, 1024), Case("decode", 1, 16384), Case("prefill", 16, 1024)):
        for block_size in (16, 32, 64, 128, 256):
            if time.monotonic() < deadline:
                inputs, ref = prepared(case, block_size)
                run(case, inputs, ref, dict(sweep="block_size"))
                del inputs, ref
    best: dict = {}
    for row in rows:
        key = (row["sweep"], row["case"])
        if "time_us" in row and (key not in best or row["time_us"] < best[key]["time_us"]):
            best[key] = row
    for row in best.values():
        print(json.dumps({k: v for k, v in row.items() if k not in ("rel_err", "time_us_eager")}))
