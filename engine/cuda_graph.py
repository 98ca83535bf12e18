"""CUDA graphs for decode steps (and, where the attention backend allows it, one request's prefill):
capture once per step shape, replay with new inputs.

Decode sizes: 1, 2, 4, 8, then every 8 up to max_num_seqs. A decode-only batch of n requests is
padded up to the smallest captured size >= n (padding requests write nothing; their outputs are
ignored). Prefill sizes: 16, 32, ..., MAX_PREFILL_GRAPH_TOKENS tokens (at most the step budget): a
step that prefills one request's T > 1 tokens and nothing else is padded with tokens after them up
to the smallest size >= T (slot PAD_SLOT_ID, outputs ignored). Such a step is host-bound when run
eagerly (hundreds of kernel launches for a few ms of GPU work): the graph is what makes the first
token of a lone request fast. All graphs share one memory pool. Before each replay the attention
builder's `build_for_capture` copies the step's metadata into its fixed-address buffers, and the
model inputs are copied into the graph's own input buffers.
"""
from __future__ import annotations

import bisect
import logging
import time

import torch

from attention.backend import MAX_PREFILL_GRAPH_TOKENS, CommonAttentionMetadata
from attention.forward_context import set_forward_context

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, 8, 16, 24, ... up to max_num_seqs (always included)."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, max_num_seqs, 8))
    return sorted(set(sizes + [max_num_seqs]))


def prefill_capture_sizes(max_num_batched_tokens: int) -> list[int]:
    """Token counts of one-request prefill graphs: powers of two from 16 to MAX_PREFILL_GRAPH_TOKENS
    that fit the step budget."""
    limit = min(max_num_batched_tokens, MAX_PREFILL_GRAPH_TOKENS)
    return [1 << p for p in range(4, limit.bit_length()) if 1 << p <= limit]


def padded_size(sizes: list[int], num_reqs: int) -> int | None:
    """The smallest captured size >= num_reqs, or None when the batch is larger than every graph."""
    i = bisect.bisect_left(sizes, num_reqs)
    return sizes[i] if i < len(sizes) else None


def prefill_graph_size(prefill_sizes: list[int], num_reqs: int, num_tokens: int) -> int | None:
    """The prefill graph's token count for a step of one request's `num_tokens` > 1 tokens (and
    nothing else), or None: run it eagerly."""
    if num_reqs != 1 or num_tokens <= 1 or not prefill_sizes:
        return None
    return padded_size(prefill_sizes, num_tokens)


class CudaGraphRunner:
    """Captured forwards of `model` (hidden states out): decode batches of each size in `sizes`,
    one-request prefills of each token count in `prefill_sizes` (empty: none)."""

    def __init__(self, model: torch.nn.Module, builder, sizes: list[int], hidden_size: int,
                 dtype: torch.dtype, device: torch.device, prefill_sizes: list[int] | None = None) -> None:
        self.model, self.builder, self.sizes = model, builder, sizes
        self.prefill_sizes = prefill_sizes or []
        max_size = max([sizes[-1], *self.prefill_sizes])
        self.input_ids = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(max_size, hidden_size, dtype=dtype, device=device)
        self.graphs: dict[tuple[int, int], torch.cuda.CUDAGraph] = {}   # by (num_reqs, num_tokens)
        self.pool = None

    def can_run(self, num_reqs: int, decode_only: bool) -> bool:
        """A batch of one-token requests no larger than the largest captured size."""
        return decode_only and num_reqs <= self.sizes[-1]

    def prefill_size(self, num_reqs: int, num_tokens: int) -> int | None:
        """See `prefill_graph_size`."""
        return prefill_graph_size(self.prefill_sizes, num_reqs, num_tokens)

    @torch.inference_mode()
    def capture(self, make_metadata) -> None:
        """`make_metadata(num_reqs, query_len)` gives a valid CommonAttentionMetadata of `num_reqs`
        fresh requests of `query_len` tokens each (decode graphs: query_len 1; prefill: num_reqs 1)."""
        start = time.perf_counter()
        shapes = [(size, 1) for size in self.sizes] + [(1, size) for size in self.prefill_sizes]
        for num_reqs, query_len in sorted(shapes, key=lambda s: -s[0] * s[1]):   # largest first, so
            num_tokens = num_reqs * query_len                                     # smaller graphs reuse its pool
            # The builder copies metadata into its fixed buffers outside the capture: a copy recorded
            # in the graph would replay the dummy batch's values over each real step's.
            meta = self.builder.build_for_capture(make_metadata(num_reqs, query_len))
            for _ in range(2):                        # warm-up outside capture (compiles kernels)
                self._forward(num_tokens, meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._forward(num_tokens, meta)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[num_reqs, num_tokens] = graph
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs (decode batch sizes %s; one-request prefills of %s tokens) in %.1f s",
                    len(self.graphs), _describe(self.sizes), self.prefill_sizes or "none",
                    time.perf_counter() - start)

    def _forward(self, size: int, meta) -> None:
        with set_forward_context(meta):
            self.hidden[:size] = self.model(self.input_ids[:size], self.positions[:size])

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, common: CommonAttentionMetadata) -> torch.Tensor:
        """Replay the graph of common's (num_reqs, num_tokens), both already padded to a captured
        shape; returns hidden [num_tokens, hidden_size]."""
        size = common.num_tokens
        self.input_ids[:size].copy_(input_ids, non_blocking=True)
        self.positions[:size].copy_(positions, non_blocking=True)
        self.builder.build_for_capture(common)        # refills the attention buffers the graph reads
        self.graphs[common.num_reqs, size].replay()
        return self.hidden[:size]


def _describe(sizes: list[int]) -> str:
    return str(sizes) if len(sizes) <= 8 else f"[{', '.join(map(str, sizes[:5]))}, ..., {sizes[-1]}]"
