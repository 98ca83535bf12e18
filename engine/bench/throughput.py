"""Offline throughput: many random-id requests at once, output tokens per second of wall time.

Default workload (the one nano-vllm, mini-sglang and vLLM publish): 256 requests, prompt lengths
uniform in [100, 1024], output lengths uniform in [100, 1024], temperature 0.6, ignore_eos, seed 0.
The requests are drawn exactly as nano-vllm's bench.py draws them (one `random.Random(seed)` stream:
each prompt's length then its ids in [0, 10000], then every output length), so with the defaults
this is the very workload its published figure was measured on: 142,827 prompt and 133,966
output tokens.
"""
from __future__ import annotations

import argparse
import contextlib
import random
import statistics

from engine.bench.common import add_engine_args, engine_kwargs, kv_cache_dtype_name, random_prompts, report, timed
from engine.bench.jit_watch import TritonJitWatch
from engine.bench.timeline import StepTimeline, format_summary


ORDERS = ("as-drawn", "longest-output-first")


def add_args(parser: argparse.ArgumentParser) -> None:
    add_engine_args(parser)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    parser.add_argument("--output-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--repeat", type=int, default=1,
                        help="time the workload this many times (prefix cache emptied before each); report the median")
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="after the timed run, profile this many decode-heavy steps (CUDA only)")
    parser.add_argument("--profile-prefill-steps", type=int, default=0,
                        help="after the timed run, profile this many of the workload's first steps (prefill; CUDA only)")
    parser.add_argument("--profile-output", default=None, help="file for the profiler's tables")
    parser.add_argument("--order", default="as-drawn", choices=ORDERS,
                        help="submission order: as drawn (the published workload), or longest output first "
                             "(an experiment: it uses the output lengths, which a scheduler cannot know)")
    parser.add_argument("--timeline", action="store_true",
                        help="group the last run's steps (prefill, decode by batch size): wall time against KV and weight floors")


def main(args: argparse.Namespace) -> dict:
    from engine import LLM, RequestOutputKind, SamplingParams

    with TritonJitWatch() as startup:   # what start-up and the warm-up build, against what the runs build
        llm = LLM(args.model, **engine_kwargs(args))
        llm.generate([[1, 2, 3]], SamplingParams(max_tokens=8), use_tqdm=False)        # warm-up
    max_id = min(llm.engine.model_config.vocab_size - 1, 10000)
    prompts, output_lens = workload(args.num_prompts, tuple(args.input_len), tuple(args.output_len), max_id,
                                    args.seed)
    prompts, output_lens = ordered(prompts, output_lens, args.order)
    # FINAL_ONLY: what LLM.generate asks for; the profiles add them to the engine as they are
    params = [SamplingParams(temperature=args.temperature, ignore_eos=True, max_tokens=n,
                             output_kind=RequestOutputKind.FINAL_ONLY) for n in output_lens]
    runs, jit = [], []
    for i in range(args.repeat):
        llm.engine.block_manager.reset_prefix_cache()   # every run prefills its prompts in full
        timeline = StepTimeline(llm.engine) if args.timeline and i == args.repeat - 1 else None
        with TritonJitWatch() as watch, timeline or contextlib.nullcontext():   # watch: variants built in the run
            outputs, elapsed = timed(lambda: llm.generate(prompts, params, use_tqdm=False))
        runs.append(elapsed)
        jit.append(watch.summary(variants=True))
    elapsed = statistics.median(runs)
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    num_in = sum(len(p) for p in prompts)
    result = {"bench": "throughput", "model": args.model, "backend": llm.engine.attention_backend, "order": args.order,
              "kv_cache_dtype": kv_cache_dtype_name(llm),
              "num_requests": len(prompts), "prompt_tokens": num_in, "output_tokens": num_out,
              "elapsed_s": round(elapsed, 3), "output_tok_per_s": round(num_out / elapsed, 1),
              "total_tok_per_s": round((num_in + num_out) / elapsed, 1),
              "runs_output_tok_per_s": [round(num_out / t, 1) for t in runs], "runs_triton_jit": jit,
              "startup_triton_jit": startup.summary(variants=True)}
    print(f"throughput {args.model} [{result['backend']}, KV {result['kv_cache_dtype']}, budget "
          f"{llm.engine.scheduler.config.max_num_batched_tokens}, {args.order}]: "
          f"{num_out} output tokens in {elapsed:.2f} s = "
          f"{result['output_tok_per_s']:.0f} output tok/s ({result['total_tok_per_s']:.0f} total tok/s)"
          + (f"; median of {len(runs)} runs: {result['runs_output_tok_per_s']}" if len(runs) > 1 else "")
          + "; Triton kernel variants built per run: "
          + ", ".join("n/a" if j["num_kernels"] is None else f"{j['num_kernels']} ({j['seconds']:.2f} s)"
                      for j in jit))
    if timeline is not None:
        result["timeline"] = timeline.summary()
        print("timeline of the last run:\n" + format_summary(result["timeline"]))
    if args.profile_prefill_steps:
        result["prefill_profile"] = _profile_prefill(llm, prompts, params, args)
        print("prefill profile:", result["prefill_profile"])
    if args.profile_steps:
        result["profile"] = _profile(llm, prompts, params, args)
        print("profile:", result["profile"])
    report(result, args)
    return result


def workload(num_prompts: int, input_len: tuple[int, int], output_len: tuple[int, int], max_id: int,
             seed: int) -> tuple[list[list[int]], list[int]]:
    """(prompts of token ids in [0, max_id], output lengths), both ranges inclusive, drawn in
    nano-vllm's order from one random stream."""
    rng = random.Random(seed)
    prompts = random_prompts(num_prompts, input_len, max_id + 1, rng)   # randrange(n) draws as randint(0, n-1)
    return prompts, [rng.randint(*output_len) for _ in range(num_prompts)]


def ordered(prompts: list[list[int]], output_lens: list[int], order: str) -> tuple[list[list[int]], list[int]]:
    """The requests in submission `order` (ORDERS); longest-output-first is a stable sort."""
    if order == "as-drawn":
        return prompts, output_lens
    if order != "longest-output-first":
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    index = sorted(range(len(prompts)), key=lambda i: -output_lens[i])
    return [prompts[i] for i in index], [output_lens[i] for i in index]


def _profile(llm, prompts, params, args) -> dict:
    """Re-run the workload's start, then profile steps once the batch is decoding."""
    from engine.bench.step_profile import profile_steps, wait_per_step

    engine = llm.engine
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(f"profile-{i}", p, sp)
    while engine.scheduler.waiting or any(r.num_output_tokens == 0 for r in engine.scheduler.running):
        engine.step()
    for _ in range(20):
        engine.step()
    host = wait_per_step(engine, 20)
    result = profile_steps(engine, args.profile_steps, args.profile_output)
    result["host"] = host
    result["batch_size"] = len(engine.scheduler.running)
    engine.abort_request([f"profile-{i}" for i in range(len(prompts))])
    return result


def _profile_prefill(llm, prompts, params, args) -> dict:
    """Add the workload again and profile its first steps (those that prefill the prompts)."""
    from engine.bench.step_profile import profile_steps

    engine = llm.engine
    engine.block_manager.reset_prefix_cache()
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(f"prefill-{i}", p, sp)
    path = args.profile_output and args.profile_output + ".prefill"
    result = profile_steps(engine, args.profile_prefill_steps, path)
    engine.abort_request([f"prefill-{i}" for i in range(len(prompts))])
    return result
