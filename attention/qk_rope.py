"""`QKRope`: the per-head q/k RMSNorm and rope a model applies before attention, handed to
`Attention` so that a backend may fuse them into its own kernel (the triton decode kernel does: one
launch less per layer and step). Backends that do not fuse it get q and k after `apply`."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch


@dataclass(frozen=True)
class QKRope:
    """positions [T] int64 (< cos_sin_cache.shape[0]); cos_sin_cache [max_position, rotary_dim]
    float32, cos | sin halves, unit last stride (neox rope over each head's first rotary_dim dims);
    q_norm_weight, k_norm_weight [head_size] or both None (no norm); eps the norms' epsilon.
    apply(q [T, H * D], k [T, Hkv * D]) -> (q, k) normalized and rotated: the unfused path, whose
    rounding a fused kernel must reproduce."""

    positions: torch.Tensor
    cos_sin_cache: torch.Tensor
    q_norm_weight: torch.Tensor | None
    k_norm_weight: torch.Tensor | None
    eps: float
    apply: Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]

    @property
    def rotary_dim(self) -> int:
        return self.cos_sin_cache.shape[1]
