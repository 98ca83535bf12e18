"""CUDA graphs for decode steps: capture once per batch size, replay with new inputs.

Sizes: 1, 2, 4, 8, then every 8 up to max_num_seqs. A decode-only batch of n requests is padded up to
the smallest captured size >= n (padding requests write nothing; their outputs are ignored). All
graphs share one memory pool. Before each replay the attention builder's `build_for_capture` copies
the step's metadata into its fixed-address buffers, and the model inputs are copied into the graph's
own input buffers.
"""
from __future__ import annotations

import bisect
import logging
import time

import torch

from attention.backend import CommonAttentionMetadata
from attention.forward_context import set_forward_context

logger = logging.getLogger(__name__)


def capture_sizes(max_num_seqs: int) -> list[int]:
    """Batch sizes to capture: 1, 2, 4, 8, 16, 24, ... up to max_num_seqs (always included)."""
    sizes = [s for s in (1, 2, 4) if s < max_num_seqs] + list(range(8, max_num_seqs, 8))
    return sorted(set(sizes + [max_num_seqs]))


def padded_size(sizes: list[int], num_reqs: int) -> int | None:
    """The smallest captured size >= num_reqs, or None when the batch is larger than every graph."""
    i = bisect.bisect_left(sizes, num_reqs)
    return sizes[i] if i < len(sizes) else None


class CudaGraphRunner:
    """Captured decode forwards of `model` (hidden states out), one per size in `sizes`."""

    def __init__(self, model: torch.nn.Module, builder, sizes: list[int], hidden_size: int,
                 dtype: torch.dtype, device: torch.device) -> None:
        self.model, self.builder, self.sizes = model, builder, sizes
        max_size = sizes[-1]
        self.input_ids = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.positions = torch.zeros(max_size, dtype=torch.int64, device=device)
        self.hidden = torch.zeros(max_size, hidden_size, dtype=dtype, device=device)
        self.graphs: dict[int, torch.cuda.CUDAGraph] = {}
        self.pool = None

    def can_run(self, num_reqs: int, decode_only: bool) -> bool:
        """A batch of one-token requests no larger than the largest captured size."""
        return decode_only and num_reqs <= self.sizes[-1]

    @torch.inference_mode()
    def capture(self, make_metadata) -> None:
        """`make_metadata(size)` gives a valid decode-only CommonAttentionMetadata of `size` requests."""
        start = time.perf_counter()
        for size in reversed(self.sizes):            # largest first, so smaller graphs reuse its pool
            # The builder copies metadata into its fixed buffers outside the capture: a copy recorded
            # in the graph would replay the dummy batch's values over each real step's.
            meta = self.builder.build_for_capture(make_metadata(size))
            for _ in range(2):                        # warm-up outside capture (compiles kernels)
                self._forward(size, meta)
            torch.cuda.synchronize()
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self._forward(size, meta)
            if self.pool is None:
                self.pool = graph.pool()
            self.graphs[size] = graph
        torch.cuda.synchronize()
        logger.info("captured %d CUDA graphs for decode batch sizes %s in %.1f s", len(self.sizes),
                    _describe(self.sizes), time.perf_counter() - start)

    def _forward(self, size: int, meta) -> None:
        with set_forward_context(meta):
            self.hidden[:size] = self.model(self.input_ids[:size], self.positions[:size])

    def run(self, input_ids: torch.Tensor, positions: torch.Tensor, common: CommonAttentionMetadata) -> torch.Tensor:
        """Replay the graph of size common.num_reqs (already padded); returns hidden [size, hidden_size]."""
        size = common.num_reqs
        self.input_ids[:size].copy_(input_ids, non_blocking=True)
        self.positions[:size].copy_(positions, non_blocking=True)
        self.builder.build_for_capture(common)        # refills the attention buffers the graph reads
        self.graphs[size].replay()
        return self.hidden[:size]


def _describe(sizes: list[int]) -> str:
    return str(sizes) if len(sizes) <= 8 else f"[{', '.join(map(str, sizes[:5]))}, ..., {sizes[-1]}]"
