"""SiLU-and-multiply over the fused gate_up projection (one Triton kernel on CUDA, torch ops elsewhere)."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from models.layers.ops import load, use_fused


class SiluAndMul(nn.Module):
    """x: [T, 2 * I] laid out [gate | up] -> silu(gate) * up: [T, I], same dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if use_fused(x):
            return load("silu_and_mul").silu_and_mul(x)
        return self.forward_native(x)

    @staticmethod
    def forward_native(x: torch.Tensor) -> torch.Tensor:
        """The torch path of `forward` (CPU, and the reference for the Triton kernel)."""
        gate, up = x.chunk(2, dim=-1)
        return F.silu(gate) * up
