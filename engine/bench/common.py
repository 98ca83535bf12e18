"""Arguments and helpers shared by the offline benchmarks (throughput, latency)."""
from __future__ import annotations

import argparse
import json
import platform
import random
import time

import torch

from attention.backend import dtype_name
from engine.config import KV_CACHE_DTYPES
from models.layers.rotary import derived_max_model_len
from models.loader import resolve_model


DEFAULT_MAX_MODEL_LEN = 4096    # room for the workloads' longest request; keeps block tables and graphs small


def add_engine_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", default="preset:qwen3-0.6b", help="preset:NAME, a local folder or a hub id")
    parser.add_argument("--load-format", default="dummy", choices=["auto", "safetensors", "dummy"])
    parser.add_argument("--dtype", default="auto")
    parser.add_argument("--kv-cache-dtype", default="auto", choices=list(KV_CACHE_DTYPES),
                        help="auto: the model dtype; fp8 / fp8_e4m3: float8_e4m3fn, scale 1.0 (not flash_attn)")
    parser.add_argument("--attention-backend", default=None)
    parser.add_argument("--max-num-seqs", type=int, default=256)
    parser.add_argument("--max-model-len", type=int, default=None,
                        help=f"default: {DEFAULT_MAX_MODEL_LEN}, or the model's own length where that is shorter")
    parser.add_argument("--max-num-batched-tokens", type=int, default=None)
    parser.add_argument("--gpu-memory-utilization", type=float, default=0.9)
    parser.add_argument("--block-size", type=int, default=None)
    parser.add_argument("--enforce-eager", action="store_true")
    parser.add_argument("--no-prefix-caching", action="store_true")
    parser.add_argument("--no-async-scheduling", action="store_true", help="do not overlap host and GPU work")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default=None, help="write the result as JSON to this file")


def engine_kwargs(args: argparse.Namespace) -> dict:
    return dict(load_format=args.load_format, dtype=args.dtype, kv_cache_dtype=args.kv_cache_dtype,
                attention_backend=args.attention_backend,
                max_num_seqs=args.max_num_seqs, max_model_len=args.max_model_len or _default_max_model_len(args),
                max_num_batched_tokens=args.max_num_batched_tokens,
                gpu_memory_utilization=args.gpu_memory_utilization, block_size=args.block_size,
                enforce_eager=args.enforce_eager, enable_prefix_caching=not args.no_prefix_caching, seed=args.seed,
                async_scheduling=not args.no_async_scheduling)


def _default_max_model_len(args: argparse.Namespace) -> int:
    return min(DEFAULT_MAX_MODEL_LEN, derived_max_model_len(resolve_model(args.model, None, args.load_format).hf_config))


def kv_cache_dtype_name(llm) -> str:
    """The KV cache's resolved dtype ("bfloat16", "float8_e4m3fn", ...), for bench output."""
    return dtype_name(llm.engine.kv_cache_dtype)


def random_prompts(num: int, len_range: tuple[int, int], vocab_size: int,
                   seed: int | random.Random) -> list[list[int]]:
    """`num` prompts of random token ids in [0, vocab_size), lengths uniform in len_range (inclusive);
    each prompt's length is drawn, then its ids. `seed` may be a Random to go on drawing from."""
    rng = seed if isinstance(seed, random.Random) else random.Random(seed)
    return [[rng.randrange(vocab_size) for _ in range(rng.randint(*len_range))] for _ in range(num)]


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def timed(fn):
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return result, time.perf_counter() - start


def report(result: dict, args: argparse.Namespace) -> None:
    result["device"] = torch.cuda.get_device_name() if torch.cuda.is_available() else platform.processor() or "cpu"
    result["date"] = time.strftime("%Y-%m-%d")
    if args.output:
        with open(args.output, "w") as f:
            json.dump(result, f, indent=2)
