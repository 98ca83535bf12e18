"""Online serving benchmark: random token-id prompts streamed to a running OpenAI-compatible server.

Prompts and output lengths are uniform in the given ranges (seeded); requests are sent with
ignore_eos so each produces exactly its output length, at a Poisson request rate or with a fixed
maximum concurrency. Reports throughput and TTFT / TPOT / ITL / end-to-end latency percentiles.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import random
import time
from dataclasses import dataclass, field

import numpy as np

from engine.bench.common import random_prompts

PERCENTILES = (50, 90, 99)


@dataclass
class RequestResult:
    ok: bool
    prompt_len: int
    output_len: int = 0
    ttft: float = 0.0
    e2e: float = 0.0
    itls: list[float] = field(default_factory=list)
    error: str = ""


def add_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--base-url", default="http://127.0.0.1:8000", help="server root (without /v1)")
    p.add_argument("--model", default=None, help="served model name (default: the first of /v1/models)")
    p.add_argument("--api-key", default=None)
    p.add_argument("--num-prompts", type=int, default=100)
    p.add_argument("--input-len", type=int, nargs=2, default=(128, 512), metavar=("MIN", "MAX"))
    p.add_argument("--output-len", type=int, nargs=2, default=(64, 256), metavar=("MIN", "MAX"))
    p.add_argument("--vocab-size", type=int, default=256, help="prompt token ids are drawn from [0, VOCAB_SIZE)")
    p.add_argument("--request-rate", type=float, default=float("inf"), help="Poisson rate in requests/s (inf: all at once)")
    p.add_argument("--max-concurrency", type=int, default=None, help="at most this many requests in flight")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--timeout", type=float, default=600.0, help="per-request timeout in seconds")
    p.add_argument("--output", default=None, help="write the results as JSON here")


def make_workload(args) -> list[tuple[list[int], int]]:
    """(prompt token ids, output length) per request, reproducible from args.seed."""
    prompts = random_prompts(args.num_prompts, tuple(args.input_len), args.vocab_size, args.seed)
    rng = random.Random(args.seed + 1)
    return [(prompt, rng.randint(*args.output_len)) for prompt in prompts]


async def _one_request(client, url: str, model: str, prompt: list[int], output_len: int) -> RequestResult:
    body = {"model": model, "prompt": prompt, "max_tokens": output_len, "ignore_eos": True, "temperature": 0.0,
            "stream": True, "stream_options": {"include_usage": True}}
    result = RequestResult(ok=False, prompt_len=len(prompt))
    start = last = time.perf_counter()
    try:
        async with client.stream("POST", url, json=body) as resp:
            if resp.status_code != 200:
                result.error = f"HTTP {resp.status_code}: {(await resp.aread()).decode()[:200]}"
                return result
            async for line in resp.aiter_lines():
                if not line.startswith("data: ") or line == "data: [DONE]":
                    continue
                chunk = json.loads(line[6:])
                if "error" in chunk:
                    result.error = chunk["error"]["message"]
                    return result
                if chunk.get("usage"):
                    result.output_len = chunk["usage"]["completion_tokens"]
                if chunk.get("choices") and chunk["choices"][0].get("text") is not None:
                    now = time.perf_counter()
                    if result.ttft == 0.0:
                        result.ttft = now - start
                    else:
                        result.itls.append(now - last)
                    last = now
    except Exception as exc:  # noqa: BLE001 - a failed request is counted, not fatal
        result.error = repr(exc)
        return result
    result.e2e = time.perf_counter() - start
    result.ok = True
    return result


async def run(args) -> dict:
    import httpx

    headers = {"Authorization": f"Bearer {args.api_key}"} if args.api_key else {}
    workload = make_workload(args)
    limits = httpx.Limits(max_connections=args.max_concurrency or len(workload) or 1)
    async with httpx.AsyncClient(base_url=args.base_url, headers=headers, timeout=args.timeout, limits=limits) as client:
        model = args.model or (await client.get("/v1/models")).json()["data"][0]["id"]
        semaphore = asyncio.Semaphore(args.max_concurrency) if args.max_concurrency else None
        rng = np.random.default_rng(args.seed)

        async def limited(prompt, output_len):
            if semaphore is None:
                return await _one_request(client, "/v1/completions", model, prompt, output_len)
            async with semaphore:
                return await _one_request(client, "/v1/completions", model, prompt, output_len)

        start = time.perf_counter()
        tasks = []
        for prompt, output_len in workload:
            tasks.append(asyncio.create_task(limited(prompt, output_len)))
            if args.request_rate != float("inf"):
                await asyncio.sleep(rng.exponential(1.0 / args.request_rate))
        results = await asyncio.gather(*tasks)
        duration = time.perf_counter() - start
    return summarize(args, model, results, duration)


def _pcts(values: list[float]) -> dict:
    if not values:
        return {"mean": None, **{f"p{p}": None for p in PERCENTILES}}
    arr = np.asarray(values) * 1000.0
    return {"mean": float(arr.mean()), **{f"p{p}": float(np.percentile(arr, p)) for p in PERCENTILES}}


def summarize(args, model: str, results: list[RequestResult], duration: float) -> dict:
    ok = [r for r in results if r.ok]
    num_output = sum(r.output_len for r in ok)
    tpots = [(r.e2e - r.ttft) / (r.output_len - 1) for r in ok if r.output_len > 1]
    return {
        "model": model, "num_prompts": len(results), "completed": len(ok), "failed": len(results) - len(ok),
        "errors": sorted({r.error for r in results if not r.ok})[:5],
        "request_rate": args.request_rate if args.request_rate != float("inf") else "inf",
        "max_concurrency": args.max_concurrency, "duration_s": duration,
        "total_input_tokens": sum(r.prompt_len for r in ok), "total_output_tokens": num_output,
        "request_throughput": len(ok) / duration if duration else 0.0,
        "output_throughput": num_output / duration if duration else 0.0,
        "ttft_ms": _pcts([r.ttft for r in ok]), "tpot_ms": _pcts(tpots),
        "itl_ms": _pcts([x for r in ok for x in r.itls]), "e2e_ms": _pcts([r.e2e for r in ok]),
    }


def format_table(summary: dict) -> str:
    lines = [f"{'model':<28}{summary['model']}",
             f"{'requests ok / failed':<28}{summary['completed']} / {summary['failed']}",
             f"{'duration (s)':<28}{summary['duration_s']:.2f}",
             f"{'request throughput (req/s)':<28}{summary['request_throughput']:.2f}",
             f"{'output throughput (tok/s)':<28}{summary['output_throughput']:.1f}",
             f"{'metric (ms)':<12}{'mean':>10}" + "".join(f"{f'p{p}':>10}" for p in PERCENTILES)]
    for key in ("ttft_ms", "tpot_ms", "itl_ms", "e2e_ms"):
        row = summary[key]
        cells = [row["mean"]] + [row[f"p{p}"] for p in PERCENTILES]
        lines.append(f"{key[:-3].upper():<12}" + "".join(f"{'-' if v is None else f'{v:.2f}':>10}" for v in cells))
    for err in summary["errors"]:
        lines.append(f"error: {err}")
    return "\n".join(lines)


def main(args) -> dict:
    for name in ("input_len", "output_len"):
        low, high = getattr(args, name)
        if not 1 <= low <= high:
            raise SystemExit(f"--{name.replace('_', '-')} needs 1 <= MIN <= MAX, got {low} {high}")
    summary = asyncio.run(run(args))
    print(format_table(summary))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(summary, f, indent=2)
    return summary
