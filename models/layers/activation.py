"""SiLU-and-multiply over the fused gate_up projection (one Triton kernel on CUDA, torch ops elsewhere)."""
from __future__ import annotations

import torch
from torch import nn

from models.layers.ops import apply_silu_and_mul, silu_and_mul_native


class SiluAndMul(nn.Module):
    """x: [T, 2 * I] laid out [gate | up] -> silu(gate) * up: [T, I], same dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return apply_silu_and_mul(x)

    @staticmethod
    def forward_native(x: torch.Tensor) -> torch.Tensor:
        """The torch path of `forward` (CPU, and the reference for the Triton kernel)."""
        return silu_and_mul_native(x)
