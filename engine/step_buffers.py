"""Persistent host/device buffers for a step's inputs: no allocation per step, one copy per tensor.

On CUDA each buffer is a pinned host tensor (written through a numpy view) and a device tensor of the
same size; `upload(name, n)` copies the first n elements with a non-blocking transfer and returns the
device view. There are two host sets, used in turn (`flip()`): while one step's copies may still be
queued behind the GPU's current work, the next step writes the other set. A set is written again only
after the step that used it returned its sampled tokens, which waits for its copies. The device side
needs one set: work on the stream runs in order. On the CPU host and device are one tensor.
"""
from __future__ import annotations

import torch

from attention.backend import PAD_SLOT_ID


class StepBuffers:
    def __init__(self, max_num_tokens: int, max_num_reqs: int, max_num_blocks_per_req: int,
                 device: torch.device) -> None:
        """input_ids, positions, slot_mapping: [max_num_tokens] int64; query_start_loc [max_num_reqs + 1]
        and seq_lens [max_num_reqs] int32; block_table [max_num_reqs * max_num_blocks_per_req] int32
        (filled as a contiguous [num_reqs, num_cols] region); logits_indices, inflight_dst, inflight_src
        [max_num_reqs] int64 (where tokens sampled by the previous step go in input_ids)."""
        self.device = device
        self.on_cuda = device.type == "cuda"
        sizes = {"input_ids": (max_num_tokens, torch.int64), "positions": (max_num_tokens, torch.int64),
                 "slot_mapping": (max_num_tokens, torch.int64), "query_start_loc": (max_num_reqs + 1, torch.int32),
                 "seq_lens": (max_num_reqs, torch.int32), "logits_indices": (max_num_reqs, torch.int64),
                 "inflight_dst": (max_num_reqs, torch.int64), "inflight_src": (max_num_reqs, torch.int64),
                 "block_table": (max_num_reqs * max_num_blocks_per_req, torch.int32)}
        num_sets = 2 if self.on_cuda else 1
        self._sets = [{k: torch.zeros(n, dtype=dt, pin_memory=self.on_cuda) for k, (n, dt) in sizes.items()}
                      for _ in range(num_sets)]
        self._numpy = [{k: t.numpy() for k, t in host_set.items()} for host_set in self._sets]
        self._current = 0
        self.host_tensors, self.host = self._sets[0], self._numpy[0]
        self.dev = ({k: torch.zeros(n, dtype=dt, device=device) for k, (n, dt) in sizes.items()}
                    if self.on_cuda else self.host_tensors)
        for host_set in self._sets:
            host_set["slot_mapping"][:] = PAD_SLOT_ID

    def flip(self) -> None:
        """Switch to the other host set (call once at the start of each step)."""
        self._current = (self._current + 1) % len(self._sets)
        self.host_tensors, self.host = self._sets[self._current], self._numpy[self._current]

    def upload(self, name: str, n: int) -> torch.Tensor:
        """Device view of the first n elements, after a non-blocking copy from the host side."""
        dst = self.dev[name][:n]
        if self.on_cuda:
            dst.copy_(self.host_tensors[name][:n], non_blocking=True)
        return dst

    def host_view(self, name: str, n: int) -> torch.Tensor:
        return self.host_tensors[name][:n]
