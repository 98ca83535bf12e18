"""Latency: one request (128 prompt tokens, 512 output tokens), milliseconds per output token.

Reports the median over --iters runs of wall time / output tokens, and the decode-only time per
token (wall time after the first token).
"""
from __future__ import annotations

import argparse
import statistics
import time

from engine.bench.common import add_engine_args, engine_kwargs, kv_cache_dtype_name, random_prompts, report, sync


def add_args(parser: argparse.ArgumentParser) -> None:
    add_engine_args(parser)
    parser.add_argument("--input-len", type=int, default=128)
    parser.add_argument("--output-len", type=int, default=512)
    parser.add_argument("--iters", type=int, default=3)
    parser.add_argument("--profile-steps", type=int, default=0, help="then profile this many decode steps (CUDA)")
    parser.add_argument("--profile-output", default=None, help="file for the profiler's tables")
    parser.add_argument("--profile-first-token", action="store_true",
                        help="then profile the request's first token (prefill step and the step after it; CUDA)")


def _one_run(engine, prompt, params) -> tuple[float, float]:
    """(total seconds, seconds after the first token) for one request run to completion."""
    sync()
    start = time.perf_counter()
    engine.add_request("latency", prompt, params)
    first = None
    while engine.has_unfinished_requests():
        for out in engine.step():
            if first is None and out.outputs[0].token_ids:
                first = time.perf_counter()
    sync()
    end = time.perf_counter()
    return end - start, end - first


def main(args: argparse.Namespace) -> dict:
    from engine import LLM, SamplingParams

    llm = LLM(args.model, **engine_kwargs(args))
    prompt = random_prompts(1, (args.input_len, args.input_len), min(llm.engine.model_config.vocab_size, 10000),
                            args.seed)[0]
    params = SamplingParams(temperature=0, ignore_eos=True, max_tokens=args.output_len)
    _one_run(llm.engine, prompt, SamplingParams(temperature=0, ignore_eos=True, max_tokens=16))   # warm-up
    runs = [_one_run(llm.engine, prompt, params) for _ in range(args.iters)]
    total = statistics.median(r[0] for r in runs)
    decode = statistics.median(r[1] for r in runs)
    first_token = statistics.median(r[0] - r[1] for r in runs)   # prefill, first sample, host set-up
    result = {"bench": "latency", "model": args.model, "backend": llm.engine.attention_backend,
              "kv_cache_dtype": kv_cache_dtype_name(llm),
              "input_len": args.input_len, "output_len": args.output_len, "iters": args.iters,
              "ms_per_token": round(1000 * total / args.output_len, 3),
              "decode_ms_per_token": round(1000 * decode / (args.output_len - 1), 3),
              "first_token_ms": round(1000 * first_token, 2), "total_s": round(total, 3)}
    print(f"latency {args.model} [{result['backend']}, KV {result['kv_cache_dtype']}]: "
          f"{result['ms_per_token']:.3f} ms/token "
          f"(decode {result['decode_ms_per_token']:.3f} ms/token, first token {result['first_token_ms']:.1f} ms, "
          f"{total:.2f} s for {args.output_len} tokens)")
    if args.profile_steps:
        from engine.bench.step_profile import profile_steps, wait_per_step
        llm.engine.add_request("profile", prompt, params)
        for _ in range(8):
            llm.engine.step()
        result["host"] = wait_per_step(llm.engine, 100)
        print("host:", result["host"])
        result["profile"] = profile_steps(llm.engine, args.profile_steps, args.profile_output)
        llm.engine.abort_request(["profile"])
        print("profile:", result["profile"])
    if args.profile_first_token:
        result["first_token_profile"] = _profile_first_token(llm.engine, prompt, args.profile_output)
        print("first token profile:", result["first_token_profile"])
    report(result, args)
    return result


def _profile_first_token(engine, prompt, path: str | None) -> dict:
    """Host and GPU time of a request's first token (two steps with async scheduling), by op."""
    from engine import SamplingParams
    from engine.bench.step_profile import profile_calls

    def first_token():
        engine.add_request("first-token", prompt, SamplingParams(temperature=0, ignore_eos=True, max_tokens=1))
        while engine.has_unfinished_requests():
            engine.step()
    result = profile_calls(first_token, None if path is None else path + ".first_token")
    result["python_top_tottime_ms"] = _python_profile(first_token)
    return result


def _python_profile(fn, num_rows: int = 12) -> dict:
    """fn() under cProfile: the Python functions with the most own time (ms), where host time goes."""
    import cProfile
    import pstats

    profiler = cProfile.Profile()
    sync()
    profiler.runcall(fn)
    sync()
    stats = pstats.Stats(profiler).sort_stats("tottime")
    rows = [(f"{func[0].rsplit('/', 2)[-1]}:{func[1]} {func[2]}", tottime, ncalls)
            for func, (_, ncalls, tottime, _, _) in stats.stats.items()]
    rows.sort(key=lambda r: -r[1])
    return {f"{name} (x{n})": round(1000 * t, 3) for name, t, n in rows[:num_rows]}
