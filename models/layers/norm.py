"""RMSNorm with an optional fused residual add (one Triton kernel on CUDA, torch ops elsewhere)."""
from __future__ import annotations

import torch
from torch import nn

from models.layers.ops import apply_rms_norm, rms_norm_native


class RMSNorm(nn.Module):
    """y = x / sqrt(mean(x^2) + eps) * weight, computed in float32, returned in the input dtype."""

    def __init__(self, hidden_size: int, eps: float = 1e-6) -> None:
        super().__init__()
        self.hidden_size = hidden_size
        self.eps = eps
        self.weight = nn.Parameter(torch.ones(hidden_size), requires_grad=False)

    def forward(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """x: [..., hidden_size]; residual: same shape or None.

        Without residual returns the normalised x. With it, first x = x + residual; returns
        (normalised x, x) so the sum becomes the next residual. New tensors; the inputs are untouched.
        """
        return apply_rms_norm(x, residual, self.weight, self.eps)

    def forward_native(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """The torch path of `forward` (CPU, and the reference for the Triton kernel)."""
        return rms_norm_native(x, residual, self.weight, self.eps)
