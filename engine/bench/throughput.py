"""Offline throughput: many random-id requests at once, output tokens per second of wall time.

Default workload (the one nano-vllm, mini-sglang and vLLM publish): 256 requests, prompt lengths
uniform in [100, 1024], output lengths uniform in [100, 1024], temperature 0.6, ignore_eos, seed 0.
"""
from __future__ import annotations

import argparse
import random

from engine.bench.common import add_engine_args, engine_kwargs, random_prompts, report, timed


def add_args(parser: argparse.ArgumentParser) -> None:
    add_engine_args(parser)
    parser.add_argument("--num-prompts", type=int, default=256)
    parser.add_argument("--input-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    parser.add_argument("--output-len", type=int, nargs=2, default=[100, 1024], metavar=("MIN", "MAX"))
    parser.add_argument("--temperature", type=float, default=0.6)
    parser.add_argument("--profile-steps", type=int, default=0,
                        help="after the timed run, profile this many decode-heavy steps (CUDA only)")
    parser.add_argument("--profile-output", default=None, help="file for the profiler's tables")


def main(args: argparse.Namespace) -> dict:
    from engine import LLM, SamplingParams

    llm = LLM(args.model, **engine_kwargs(args))
    vocab = llm.engine.model_config.vocab_size
    prompts = random_prompts(args.num_prompts, tuple(args.input_len), min(vocab, 10000), args.seed)
    rng = random.Random(args.seed + 1)
    params = [SamplingParams(temperature=args.temperature, ignore_eos=True, max_tokens=rng.randint(*args.output_len))
              for _ in prompts]
    llm.generate([[1, 2, 3]], SamplingParams(max_tokens=8), use_tqdm=False)        # warm-up
    outputs, elapsed = timed(lambda: llm.generate(prompts, params, use_tqdm=False))
    num_out = sum(len(o.outputs[0].token_ids) for o in outputs)
    num_in = sum(len(p) for p in prompts)
    result = {"bench": "throughput", "model": args.model, "backend": llm.engine.attention_backend,
              "num_requests": len(prompts), "prompt_tokens": num_in, "output_tokens": num_out,
              "elapsed_s": round(elapsed, 3), "output_tok_per_s": round(num_out / elapsed, 1),
              "total_tok_per_s": round((num_in + num_out) / elapsed, 1)}
    print(f"throughput {args.model} [{result['backend']}]: {num_out} output tokens in {elapsed:.2f} s = "
          f"{result['output_tok_per_s']:.0f} output tok/s ({result['total_tok_per_s']:.0f} total tok/s)")
    if args.profile_steps:
        result["profile"] = _profile(llm, prompts, params, args)
        print("profile:", result["profile"])
    report(result, args)
    return result


def _profile(llm, prompts, params, args) -> dict:
    """Re-run the workload's start, then profile steps once the batch is decoding."""
    from engine.bench.step_profile import profile_steps

    engine = llm.engine
    for i, (p, sp) in enumerate(zip(prompts, params)):
        engine.add_request(f"profile-{i}", p, sp, stream=False)
    while engine.scheduler.waiting or any(r.num_output_tokens == 0 for r in engine.scheduler.running):
        engine.step()
    for _ in range(20):
        engine.step()
    result = profile_steps(engine, args.profile_steps, args.profile_output)
    result["batch_size"] = len(engine.scheduler.running)
    engine.abort_request([f"profile-{i}" for i in range(len(prompts))])
    return result
