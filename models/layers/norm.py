"""RMSNorm with an optional fused residual add (one Triton kernel on CUDA, torch ops elsewhere)."""
from __future__ import annotations

import torch
from torch import nn

from models.layers.ops import load, use_fused


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
        if not use_fused(x):
            return self.forward_native(x, residual)
        ops = load("rms_norm")
        if residual is None:
            return ops.rms_norm(x, self.weight, self.eps)
        return ops.fused_add_rms_norm(x, residual, self.weight, self.eps)

    def forward_native(self, x: torch.Tensor, residual: torch.Tensor | None = None):
        """The torch path of `forward` (CPU, and the reference for the Triton kernel)."""
        dtype = x.dtype
        xf = x.float()
        if residual is not None:
            xf = xf + residual.float()
            residual = xf.to(dtype)
        variance = xf.pow(2).mean(dim=-1, keepdim=True)
        out = (xf * torch.rsqrt(variance + self.eps) * self.weight.float()).to(dtype)
        return out if residual is None else (out, residual)
