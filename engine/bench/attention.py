"""Attention backends side by side: paged decode and causal prefill, checked against torch_ref.

`python -m engine.bench attention [--backends triton,flash_attn] [--kv-cache-dtype fp8] [--output results.json]`
Every backend reads the same logical K/V (scattered into its own block size through a random block
table); each is compared with torch_ref on those inputs before it is timed and is refused when it
differs. Decode steps are timed as CUDA-graph replays (how the engine runs them) and eagerly;
prefill eagerly. Times are medians of triton.testing.do_bench. With `--kv-cache-dtype fp8` the caches
(torch_ref's too) hold the K/V cast to float8_e4m3fn, and backends that cannot read it are skipped.
With ENGINE_TRITON_KV_LAYOUT=HND the triton backend is timed on that memory order of its cache.
`--ragged` gives decode cases per-request lengths (see engine/bench/ragged.py: `--orders`, and
`--splits` to time the triton decode at forced split counts); `--decode-cases 256x2048,...` picks them.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace

import torch

from attention.backend import CommonAttentionMetadata
from attention.backends.torch_ref import TorchRefBackend
from attention.selector import load_backend, reasons_against
from engine.bench.ragged import (add_ragged_args, forced_splits, kv_read_bytes, parse_cases, ragged_lens,
                                 split_summary)

DECODE_CASES = [(1, 1024), (64, 1024), (256, 1024), (256, 4096), (32, 16384), (1, 16384)]
PREFILL_CASES = [(16, 1024), (4, 4096)]
TOLERANCE = 2e-2
DEVICE = "cuda"


@dataclass
class Case:
    kind: str   # "decode" or "prefill"
    batch: int
    seq_len: int
    lens: tuple[int, ...] | None = None   # ragged (decode): each request's length; None: all seq_len
    order: str = ""                        # how the ragged lengths are ordered (ragged.ORDERS)

    @property
    def name(self) -> str:
        return f"{self.kind} {self.batch}x{self.seq_len}" + (f" ragged {self.order}" if self.lens else "")

    @property
    def seq_lens(self) -> list[int]:
        return list(self.lens) if self.lens else [self.seq_len] * self.batch

    @property
    def query_len(self) -> int:
        return 1 if self.kind == "decode" else self.seq_len


@dataclass
class Inputs:
    common: CommonAttentionMetadata
    query: torch.Tensor
    key: torch.Tensor
    value: torch.Tensor
    kv_cache: torch.Tensor


def logical_kv(case: Case, shape: dict, gen: torch.Generator) -> torch.Tensor:
    """[2, batch, max seq_len, Hkv, D]: every token's K and V, shared by all backends (request r
    uses its first seq_lens[r] tokens)."""
    return torch.randn(2, case.batch, max(case.seq_lens), shape["num_kv_heads"], shape["head_size"],
                       generator=gen, device=DEVICE, dtype=shape["dtype"])


def paged_inputs(case: Case, kv: torch.Tensor, block_size: int, shape: dict, gen: torch.Generator) -> Inputs:
    """Scatter request r's first seq_lens[r] tokens of `kv` into its own blocks of a cache of
    `block_size`, through a random block table; every other slot holds NaN and the table's unused
    entries point at an extra all-NaN block, so a backend that reads past a request's length fails
    the check. The query tokens' own K/V (each request's last query_len positions) are also passed as
    key/value (the step stores them again, to the same slots)."""
    batch, q_len, lens = case.batch, case.query_len, case.seq_lens
    query = torch.randn(batch * q_len, shape["num_heads"], shape["head_size"], generator=gen, device=DEVICE,
                        dtype=kv.dtype)
    blocks = torch.tensor([-(-n // block_size) for n in lens], device=DEVICE)
    num_blocks = int(blocks.sum()) + 1
    perm = torch.randperm(num_blocks, generator=gen, device=DEVICE).int()
    table = perm[-1].repeat(batch, int(blocks.max()))                               # the NaN block
    table[torch.arange(table.shape[1], device=DEVICE) < blocks[:, None]] = perm[:-1]
    cache_dtype = shape.get("kv_cache_dtype") or kv.dtype
    cache = torch.full((2, num_blocks, block_size, *kv.shape[3:]), float("nan"), dtype=cache_dtype, device=DEVICE)
    pos = torch.arange(kv.shape[2], device=DEVICE)
    slots = table[:, pos // block_size].long() * block_size + pos % block_size      # [batch, max seq_len]
    seq_lens = torch.tensor(lens, dtype=torch.int32)
    valid = pos < seq_lens.to(DEVICE)[:, None]
    cache.view(2, num_blocks * block_size, *kv.shape[3:])[:, slots[valid]] = kv[:, valid].to(cache_dtype)
    last = seq_lens.to(DEVICE).long()[:, None] - q_len + torch.arange(q_len, device=DEVICE)   # [batch, q_len]
    qsl = torch.arange(batch + 1, dtype=torch.int32) * q_len
    common = CommonAttentionMetadata(
        num_reqs=batch, num_tokens=batch * q_len, query_start_loc=qsl.to(DEVICE), query_start_loc_cpu=qsl,
        seq_lens=seq_lens.to(DEVICE), seq_lens_cpu=seq_lens, max_query_len=q_len, max_seq_len=max(lens),
        block_table=table, slot_mapping=slots.gather(1, last).flatten(), block_size=block_size)
    new_kv = kv[:, torch.arange(batch, device=DEVICE)[:, None], last].flatten(1, 2)
    return Inputs(common, query, new_kv[0], new_kv[1], cache)


class Runner:
    """One backend's builder, metadata and impl for one set of inputs; `step()` runs forward."""

    def __init__(self, backend, inputs: Inputs, shape: dict, capture: bool = False) -> None:
        common = inputs.common
        builder = backend.get_builder_cls()(shape["num_heads"], shape["num_kv_heads"], shape["head_size"],
                                            common.block_size, common.num_reqs, common.max_seq_len,
                                            torch.device(DEVICE))
        self.metadata = builder.build_for_capture(common) if capture else builder.build(common)
        self.impl = backend.get_impl_cls()(shape["num_heads"], shape["head_size"],
                                           1.0 / math.sqrt(shape["head_size"]), shape["num_kv_heads"])
        self.inputs = inputs
        self.output = torch.empty_like(inputs.query)

    def step(self) -> None:
        i = self.inputs
        self.impl.forward(i.query, i.key, i.value, i.kv_cache, self.metadata, self.output)


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    out, ref = out.float(), ref.float()
    return float((out - ref).norm() / ref.norm()) if torch.isfinite(out).all() else float("inf")


def time_runner(runner: Runner, graph: bool) -> float:
    """Median microseconds of one step (a CUDA-graph replay when `graph`)."""
    import triton.testing
    runner.step()
    fn = runner.step
    if graph:
        cuda_graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(cuda_graph):
            runner.step()
        fn = cuda_graph.replay
    return triton.testing.do_bench(fn, warmup=25, rep=200, return_mode="median") * 1e3


def measure(backend, case: Case, inputs: Inputs, shape: dict, ref: torch.Tensor, eager: bool = True,
            splits: int | None = None) -> dict:
    """Check `backend` against the reference, then time it; a wrong backend gets no time. `splits`
    forces the triton decode's split count (ragged.forced_splits)."""
    with forced_splits(splits):
        runner = Runner(backend, inputs, shape)
    runner.step()
    err = relative_error(runner.output, ref)
    row = dict(case=case.name, backend=backend.name, block_size=inputs.common.block_size, rel_err=err,
               splits=getattr(runner.metadata, "num_splits", None) if case.kind == "decode" else None)
    if err > TOLERANCE:
        return row | dict(error=f"refused: relative error {err:.2e} > {TOLERANCE}")
    if eager or case.kind == "prefill":
        row["time_us_eager"] = time_runner(runner, graph=False)
        row["time_us"] = row["time_us_eager"]
    if case.kind == "decode":
        with forced_splits(splits):
            graph_runner = Runner(backend, inputs, shape, capture=True)
        row["time_us"] = time_runner(graph_runner, graph=True)
        kv_bytes = kv_read_bytes(case.seq_lens, shape["num_kv_heads"], shape["head_size"],
                                 inputs.kv_cache.element_size())
        row["tb_per_s"] = kv_bytes / row["time_us"] / 1e6
    else:
        flops = 4 * case.batch * case.seq_len ** 2 * shape["num_heads"] * shape["head_size"] / 2
        row["tflop_per_s"] = flops / row["time_us"] / 1e6
    return row


def reference(case: Case, kv: torch.Tensor, shape: dict, gen: torch.Generator) -> torch.Tensor:
    """torch_ref's output on the case (its query is drawn from `gen` seeded with 1)."""
    gen.manual_seed(1)
    runner = Runner(TorchRefBackend, paged_inputs(case, kv, 256, shape, gen), shape)
    runner.step()
    return runner.output


def in_backend_order(backend, inputs: Inputs) -> Inputs:
    """The same cache values in the memory order the backend allocates (ENGINE_TRITON_KV_LAYOUT=HND)."""
    c = inputs.kv_cache
    cache = backend.allocate_kv_cache(*c.shape[1:], c.dtype, c.device)
    if cache.stride() == c.stride():
        return inputs
    cache.copy_(c)
    return replace(inputs, kv_cache=cache)


def run_case(case: Case, backends: list, block_sizes: dict, shape: dict, splits=None) -> list[dict]:
    """One row per backend; the triton decode once per count in `splits` when given."""
    gen = torch.Generator(device=DEVICE).manual_seed(0)
    kv = logical_kv(case, shape, gen)
    ref = reference(case, kv, shape, gen)
    rows = []
    for backend in backends:
        gen.manual_seed(1)  # the same query as the reference; the block table is drawn after it
        inputs = in_backend_order(backend, paged_inputs(case, kv, block_sizes[backend.name], shape, gen))
        forced = splits if splits and backend.name == "triton" and case.kind == "decode" else [None]
        rows += [measure(backend, case, inputs, shape, ref, splits=n) for n in forced]
        del inputs
        torch.cuda.empty_cache()
    return rows


def format_table(rows: list[dict]) -> str:
    lines = ["| case | backend | block | splits | time (us) | eager (us) | rate | vs flash_attn | rel err |",
             "|---|---|---|---|---|---|---|---|---|"]
    flash = {r["case"]: r["time_us"] for r in rows if r["backend"] == "flash_attn" and "time_us" in r}
    for r in rows:
        if "time_us" not in r:
            lines.append(f"| {r['case']} | {r['backend']} | {r['block_size']} | {r.get('splits') or '-'} | "
                         f"{r['error']} | | | | |")
            continue
        rate = (f"{r['tb_per_s']:.2f} TB/s" if "tb_per_s" in r else f"{r['tflop_per_s']:.0f} TFLOP/s")
        speed = f"{flash[r['case']] / r['time_us']:.2f}x" if r["case"] in flash else "-"
        lines.append(f"| {r['case']} | {r['backend']} | {r['block_size']} | {r.get('splits') or '-'} | "
                     f"{r['time_us']:.1f} | "
                     f"{r.get('time_us_eager', float('nan')):.1f} | {rate} | {speed} | {r['rel_err']:.1e} |")
    return "\n".join(lines)


def add_args(parser) -> None:
    parser.add_argument("--backends", default="triton,flash_attn",
                        help="comma-separated; unavailable ones are skipped with their reasons")
    parser.add_argument("--block-size", type=int, default=None, help="triton's block size (default: its own)")
    parser.add_argument("--num-heads", type=int, default=32)
    parser.add_argument("--num-kv-heads", type=int, default=8)
    parser.add_argument("--head-size", type=int, default=128)
    parser.add_argument("--kv-cache-dtype", default="auto", choices=["auto", "fp8", "fp8_e4m3"],
                        help="fp8 / fp8_e4m3: caches in float8_e4m3fn (scale 1.0); flash_attn is skipped")
    parser.add_argument("--cases", default="all", help="'all', 'decode', 'prefill', or names like decode:1x16384")
    add_ragged_args(parser)
    parser.add_argument("--output", default=None, help="write the rows as JSON here")
    parser.add_argument("--sweep", default=None, metavar="LOG",
                        help="instead: tune the triton kernels, one JSON line per measurement into LOG")
    parser.add_argument("--sweep-seconds", type=float, default=300, help="stop starting sweep runs after this")


def select_cases(spec: str, decode_cases=None, ragged: bool = False, orders=("drawn",)) -> list[Case]:
    decode = [Case("decode", b, s, ragged_lens(b, s, o) if ragged else None, o if ragged else "")
              for b, s in decode_cases or DECODE_CASES for o in (orders if ragged else [""])]
    cases = decode + [Case("prefill", b, s) for b, s in PREFILL_CASES]
    if spec == "all":
        return cases
    wanted = spec.split(",")
    return [c for c in cases if c.kind in wanted or f"{c.kind}:{c.batch}x{c.seq_len}" in wanted]


def main(args) -> None:
    if not torch.cuda.is_available():
        raise SystemExit("the attention benchmark needs a CUDA GPU")
    from engine.config import KV_CACHE_DTYPES
    shape = dict(num_heads=args.num_heads, num_kv_heads=args.num_kv_heads, head_size=args.head_size,
                 dtype=torch.bfloat16, kv_cache_dtype=KV_CACHE_DTYPES[args.kv_cache_dtype])
    if args.sweep:
        from engine.bench.attention_sweep import sweep
        return sweep(shape, args.sweep, args.sweep_seconds)
    backends, block_sizes = [], {}
    for name in args.backends.split(","):
        block_size = args.block_size if name == "triton" else None
        reasons = reasons_against(name, torch.device("cuda"), shape["dtype"], shape["head_size"], block_size,
                                  shape["kv_cache_dtype"])
        if reasons:
            print(f"skipping {name}: {'; '.join(reasons)}")
            continue
        backend = load_backend(name)
        backends.append(backend)
        block_sizes[name] = block_size or backend.default_block_size
    rows = []
    decode_cases = parse_cases(args.decode_cases) if args.decode_cases else None
    for case in select_cases(args.cases, decode_cases, args.ragged, args.orders):
        rows += (new := run_case(case, backends, block_sizes, shape, args.splits))
        print("\n".join(format_table(new).splitlines()[2:]), flush=True)
    print(f"\n{torch.cuda.get_device_name()}, {shape}\n" + format_table(rows))
    print("\n".join(split_summary(rows)))
    if args.output:
        with open(args.output, "w") as f:
            json.dump(dict(device=torch.cuda.get_device_name(), shape={k: str(v) for k, v in shape.items()},
                           rows=rows), f, indent=1)
