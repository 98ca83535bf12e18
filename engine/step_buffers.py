"""Persistent host/device buffers for a step's inputs: no allocation per step, one copy per tensor.

On CUDA each buffer is a pinned host tensor (written through a numpy view) and a device tensor of the
same size; `upload(name, n)` copies the first n elements with a non-blocking transfer and returns the
device view. The next step overwrites the host side only after the previous step's sampled tokens were
read back, which waits for those copies. On the CPU host and device are one tensor.
"""
from __future__ import annotations

import numpy as np
import torch

from attention.backend import PAD_SLOT_ID


class StepBuffers:
    def __init__(self, max_num_tokens: int, max_num_reqs: int, max_num_blocks_per_req: int,
                 device: torch.device) -> None:
        """input_ids, positions, slot_mapping: [max_num_tokens] int64; query_start_loc [max_num_reqs + 1]
        and seq_lens [max_num_reqs] int32; block_table [max_num_reqs * max_num_blocks_per_req] int32
        (filled as a contiguous [num_reqs, num_cols] region); logits_indices [max_num_reqs] int64."""
        self.device = device
        sizes = {"input_ids": (max_num_tokens, torch.int64), "positions": (max_num_tokens, torch.int64),
                 "slot_mapping": (max_num_tokens, torch.int64), "query_start_loc": (max_num_reqs + 1, torch.int32),
                 "seq_lens": (max_num_reqs, torch.int32), "logits_indices": (max_num_reqs, torch.int64),
                 "block_table": (max_num_reqs * max_num_blocks_per_req, torch.int32)}
        on_cuda = device.type == "cuda"
        self.host_tensors = {k: torch.zeros(n, dtype=dt, pin_memory=on_cuda) for k, (n, dt) in sizes.items()}
        self.host = {k: t.numpy() for k, t in self.host_tensors.items()}
        self.dev = ({k: torch.zeros(n, dtype=dt, device=device) for k, (n, dt) in sizes.items()}
                    if on_cuda else self.host_tensors)
        self.host["slot_mapping"][:] = PAD_SLOT_ID

    def upload(self, name: str, n: int) -> torch.Tensor:
        """Device view of the first n elements, after a non-blocking copy from the host side."""
        dst = self.dev[name][:n]
        if self.device.type == "cuda":
            dst.copy_(self.host_tensors[name][:n], non_blocking=True)
        return dst

    def host_view(self, name: str, n: int) -> torch.Tensor:
        return self.host_tensors[name][:n]
