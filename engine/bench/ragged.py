"""Ragged decode batches for `python -m engine.bench attention --ragged [--orders ...] [--splits ...]`.

Each request's context length is drawn uniformly from [seq_len // 8, seq_len] (seeded, the same draw
for every order and split count), like the throughput benchmark's batches; `--orders` sets the order
of the requests in the batch, which is the order the decode grid (num_reqs, num_kv_heads, num_splits)
launches them in. `--splits` forces the triton decode's split count (the builder's `num_splits` is
replaced while the runner builds its metadata and workspace; attention/ is not changed).
"""
from __future__ import annotations

from contextlib import contextmanager

import torch

ORDERS = ("drawn", "longest-first", "shortest-first")


def ragged_lens(batch: int, seq_len: int, order: str = "drawn", seed: int = 0) -> tuple[int, ...]:
    """`batch` context lengths uniform in [seq_len // 8, seq_len], in `order` (one of ORDERS)."""
    if order not in ORDERS:
        raise ValueError(f"order must be one of {ORDERS}, got {order!r}")
    gen = torch.Generator().manual_seed(seed)
    lens = torch.randint(max(1, seq_len // 8), seq_len + 1, (batch,), generator=gen).tolist()
    if order != "drawn":
        lens.sort(reverse=order == "longest-first")
    return tuple(lens)


def add_ragged_args(parser) -> None:
    parser.add_argument("--decode-cases", default=None, metavar="BxS,...",
                        help="the decode cases instead of the built-in ones, e.g. 256x2048,64x2048")
    parser.add_argument("--ragged", action="store_true",
                        help="decode cases: per-request lengths uniform in [seq_len // 8, seq_len] (seeded)")
    parser.add_argument("--orders", nargs="+", default=["drawn"], choices=ORDERS,
                        help="with --ragged: the request orders to time (one case each)")
    parser.add_argument("--splits", nargs="+", type=int, default=None,
                        help="time the triton decode with num_splits forced to each of these")


def parse_cases(spec: str) -> list[tuple[int, int]]:
    """"256x2048,64x2048" -> [(256, 2048), (64, 2048)]."""
    try:
        return [(int(b), int(s)) for b, s in (item.split("x") for item in spec.split(","))]
    except ValueError:
        raise SystemExit(f"--decode-cases: expected BATCHxSEQ_LEN[,...], got {spec!r}") from None


@contextmanager
def forced_splits(num_splits: int | None):
    """Triton builders made inside cut every decode context into `num_splits` chunks (their split-KV
    workspace is sized for it too); None leaves the split policy alone."""
    if num_splits is None:
        yield
        return
    if num_splits < 1:
        raise ValueError(f"num_splits must be >= 1, got {num_splits}")
    from attention.backends.triton_attn import TritonAttnMetadataBuilder
    policy = TritonAttnMetadataBuilder.num_splits
    TritonAttnMetadataBuilder.num_splits = lambda self, num_reqs, max_seq_len: num_splits
    try:
        yield
    finally:
        TritonAttnMetadataBuilder.num_splits = policy


def kv_read_bytes(seq_lens, num_kv_heads: int, head_size: int, element_size: int) -> int:
    """Bytes of K and V a decode step reads: every request's context, once."""
    return sum(seq_lens) * num_kv_heads * head_size * 2 * element_size


def split_summary(rows: list[dict]) -> list[str]:
    """One line per case timed at several split counts: the fastest, then each count's time."""
    by_case: dict[str, list[dict]] = {}
    for r in rows:
        if "time_us" in r and r.get("splits") is not None:
            by_case.setdefault(f"{r['case']} {r['backend']}", []).append(r)
    lines = []
    for name, case_rows in by_case.items():
        if len(case_rows) > 1:
            best = min(case_rows, key=lambda r: r["time_us"])
            times = ", ".join(f"{r['splits']}: {r['time_us']:.1f}" for r in case_rows)
            lines.append(f"{name}: best splits {best['splits']} ({best['time_us']:.1f} us, "
                         f"{best['tb_per_s']:.2f} TB/s); us by splits {times}")
    return lines
