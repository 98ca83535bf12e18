"""CUDA graphs for decode steps (and, where the attention backend allows it, small steps with
prefill tokens): capture once per step shape, replay with new inputs.

Decode sizes: 1, 2, 4, 8, then every 8 up to max_num_seqs. A decode-only batch of n requests is
padded up to the smallest captured size >= n (padding requests write nothing; their outputs are
ignored). Prefill graphs, keyed by (requests, tokens): token counts 16, 32, ...,
MAX_PREFILL_GRAPH_TOKENS (at most the step budget), and for each of them request counts 1, 2, 4,
... up to min(tokens, max_num_seqs). A step of R requests and T tokens with prefill tokens (one
request's prefill, several, or prefills mixed with decodes: a request arriving while others
decode) is padded to the smallest token count >= T with tokens after the last request's (slot
PAD_SLOT_ID, outputs ignored), and to the smallest request count >= R with requests of no tokens
(seq_len 0). Such steps are host-bound when run eagerly (hundreds of kernel launches for a few ms
of GPU work). All graphs share one memory pool. Before each replay the attention builder's
`build_for_capture` copies the step's metadata into its fixed-address buffers, and the model
inputs are copied into the graph's own input buffers.
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
    """Token counts of prefill graphs: powers of two from 16 to MAX_PREFILL_GRAPH_TOKENS that fit
    the step budget."""
    limit = min(max_num_batched_tokens, MAX_PREFILL_GRAPH_TOKENS)
    return [1 << p for p in range(4, limit.bit_length()) if 1 << p <= limit]


def prefill_request_sizes(num_tokens: int, max_num_seqs: int) -> list[int]:
    """Request counts captured with a prefill graph of `num_tokens` tokens: powers of two under
    min(num_tokens, max_num_seqs), then that bound (a step never has more requests than tokens)."""
    limit = min(num_tokens, max_num_seqs)
    return [1 << p for p in range(limit.bit_length()) if 1 << p < limit] + [limit]


def padded_size(sizes: list[int], num_reqs: int) -> int | None:
    """The smallest captured size >= num_reqs, or None when the batch is larger than every graph."""
    i = bisect.bisect_left(sizes, num_reqs)
    return sizes[i] if i < len(sizes) else None


def prefill_graph_shape(prefill_sizes: list[int], max_num_seqs: int, num_reqs: int,
                        num_tokens: int) -> tuple[int, int] | None:
    """(padded requests, padded tokens) of the prefill graph for a step of `num_reqs` requests and
    `num_tokens` > num_reqs tokens (some request has several), or None: a decode-only step, or
    more tokens than any prefill graph (run eagerly)."""
    if num_tokens <= num_reqs or not prefill_sizes:
        return None
    padded_tokens = padded_size(prefill_sizes, num_tokens)
    if padded_tokens is None:
        return None
    return padded_size(prefill_request_sizes(padded_tokens, max_num_seqs), num_reqs), padded_tokens


class CudaGraphRunner:
    """Captured forwards of `model` (hidden states out): decode batches of each size in `sizes` (the
    last is max_num_seqs), steps with prefill tokens of each token count in `prefill_sizes` (empty:
    none) and each of its `prefill_request_sizes`."""

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

    def prefill_shape(self, num_reqs: int, num_tokens: int) -> tuple[int, int] | None:
        """See `prefill_graph_shape`."""
        return prefill_graph_shape(self.prefill_sizes, self.sizes[-1], num_reqs, num_tokens)

    def shapes(self) -> list[tuple[int, int]]:
        """Every captured (num_reqs, num_tokens): decode batches, then the prefill graphs."""
        return [(size, size) for size in self.sizes] + [
            (num_reqs, num_tokens) for num_tokens in self.prefill_sizes
            for num_reqs in prefill_request_sizes(num_tokens, self.sizes[-1])]

    @torch.inference_mode()
    def capture(self, make_metadata) -> None:
        """`make_metadata(num_reqs, num_tokens)` gives a valid CommonAttentionMetadata of `num_reqs`
        fresh requests: one token each when num_tokens == num_reqs (decode graphs), else the first
        request holds all num_tokens tokens and the others none (prefill graphs: their kernels'
        grids are sized for any split of the tokens between the requests)."""
        start = time.perf_counter()
        for num_reqs, num_tokens in sorted(self.shapes(), key=lambda s: (-s[1], -s[0])):   # largest first,
            # so smaller graphs reuse its pool. The builder copies metadata into its fixed buffers
            # outside the capture: a copy recorded in the graph would replay the dummy batch's values.
            meta = self.builder.build_for_capture(make_metadata(num_reqs, num_tokens))
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
        logger.info("captured %d CUDA graphs (decode batch sizes %s; steps with prefill tokens: %s tokens, "
                    "each with 1, 2, 4, ... requests) in %.1f s", len(self.graphs), _describe(self.sizes),
                    self.prefill_sizes or "none", time.perf_counter() - start)

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
