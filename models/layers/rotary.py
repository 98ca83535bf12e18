"""Rotary position embedding (neox style: the two halves of each head rotate together).

Rope settings are read from a Hugging Face config in either form: transformers >= 5
`config.rope_parameters = {"rope_type", "rope_theta", ...}`, or the older `config.rope_theta` plus
`config.rope_scaling`. Supported rope types: "default", "linear", "llama3" and "yarn" (YaRN also
scales cos and sin by its attention factor, as transformers and vLLM do).
"""
from __future__ import annotations

import functools
import math
from typing import Any

import torch
from torch import nn

from attention.qk_rope import QKRope
from models.layers.ops import load, use_fused

SUPPORTED_ROPE_TYPES = ("default", "linear", "llama3", "yarn")


def rope_parameters(hf_config) -> dict[str, Any]:
    """The config's rope settings as one dict with at least "rope_type" and "rope_theta"."""
    params = dict(getattr(hf_config, "rope_parameters", None) or {})
    scaling = getattr(hf_config, "rope_scaling", None) or {}
    for key, value in scaling.items():
        params.setdefault(key, value)
    legacy_type = params.pop("type", None)
    params.setdefault("rope_type", legacy_type or "default")
    if params.get("rope_theta") is None:
        params["rope_theta"] = getattr(hf_config, "rope_theta", None) or 10000.0
    if params["rope_type"] not in SUPPORTED_ROPE_TYPES:
        raise ValueError(f"rope_type must be one of {SUPPORTED_ROPE_TYPES}, got {params['rope_type']!r}")
    max_position = int(getattr(hf_config, "max_position_embeddings", 2048))
    if params["rope_type"] == "yarn" and not params.get("original_max_position_embeddings"):
        params["original_max_position_embeddings"] = max_position        # as transformers
    if params["rope_type"] in ("linear", "yarn"):
        params["factor"] = _scaling_factor(params, max_position)
    return params


def _scaling_factor(params: dict[str, Any], max_position: int) -> float:
    """"factor" of a linear or yarn rope; yarn without one takes max_position / original (as transformers)."""
    factor = params.get("factor")
    if factor is None and params["rope_type"] == "yarn":
        factor = max_position / params["original_max_position_embeddings"]
    if not isinstance(factor, (int, float)) or factor < 1:
        raise ValueError(f"rope_parameters['factor'] of a {params['rope_type']} rope must be a number >= 1, "
                         f"got {factor!r}")
    return float(factor)


def derived_max_model_len(hf_config) -> int:
    """The longest context the model's positions cover, vLLM's rule: max_position_embeddings, but a
    linear rope stretches it by its factor and a yarn rope makes it original_max_position_embeddings x
    factor (llama3 ropes already state the stretched length)."""
    max_position = int(getattr(hf_config, "max_position_embeddings", 2048))
    params = rope_parameters(hf_config)
    if params["rope_type"] == "linear":
        return int(max_position * params["factor"])
    if params["rope_type"] == "yarn":
        return int(params["original_max_position_embeddings"] * params["factor"])
    return max_position


def _default_inv_freq(rotary_dim: int, theta: float) -> torch.Tensor:
    """[rotary_dim / 2] float32: theta^(-2i / rotary_dim)."""
    exponents = torch.arange(0, rotary_dim, 2, dtype=torch.int64).to(torch.float32) / rotary_dim
    return 1.0 / (theta ** exponents)


def _yarn_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """YaRN: dimensions that turn fewer than beta_slow times over the original context are
    interpolated (divided by `factor`), those that turn more than beta_fast times kept, a linear ramp
    between. Returns the new inv_freq and the factor cos and sin are scaled by (attention_factor, else
    0.1 ln(factor) + 1, or DeepSeek's ratio of mscale / mscale_all_dim)."""
    rotary_dim = 2 * inv_freq.numel()
    base, factor = float(params["rope_theta"]), params["factor"]
    original_len = params["original_max_position_embeddings"]

    def dim_of(num_rotations: float) -> float:
        return rotary_dim * math.log(original_len / (num_rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = dim_of(params.get("beta_fast") or 32), dim_of(params.get("beta_slow") or 1)
    if params.get("truncate", True):
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, rotary_dim - 1)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(rotary_dim // 2, dtype=torch.float32) - low) / (high - low)).clamp(0, 1)
    new = inv_freq / factor * ramp + inv_freq * (1 - ramp)
    return new, _yarn_attention_factor(params, factor)


def _yarn_attention_factor(params: dict[str, Any], factor: float) -> float:
    if params.get("attention_factor") is not None:
        return float(params["attention_factor"])

    def mscale(scale: float) -> float:
        return 1.0 if factor <= 1 else 0.1 * scale * math.log(factor) + 1.0

    if params.get("mscale") and params.get("mscale_all_dim"):
        return mscale(params["mscale"]) / mscale(params["mscale_all_dim"])
    return mscale(1.0)


def _llama3_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> torch.Tensor:
    """Llama 3.1 scaling: long wavelengths slowed by `factor`, short ones kept, a smooth blend between."""
    factor = params["factor"]
    low_freq_factor = params["low_freq_factor"]
    high_freq_factor = params["high_freq_factor"]
    old_context_len = params["original_max_position_embeddings"]
    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    scaled = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    blended = (1 - smooth) * scaled / factor + smooth * scaled
    is_medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
    return torch.where(is_medium, blended, scaled)


def _scaled_inv_freq(inv_freq: torch.Tensor, params: dict[str, Any]) -> tuple[torch.Tensor, float]:
    """The rope type's inv_freq [rotary_dim / 2] float32, and the factor on cos and sin (1 but for yarn)."""
    if params["rope_type"] == "llama3":
        return _llama3_inv_freq(inv_freq, params), 1.0
    if params["rope_type"] == "linear":
        return inv_freq / params["factor"], 1.0
    if params["rope_type"] == "yarn":
        return _yarn_inv_freq(inv_freq, params)
    return inv_freq, 1.0


class RotaryEmbedding(nn.Module):
    """Applies rope to q [T, H * D] and k [T, Hkv * D] at positions [T] int64.

    Keeps `cos_sin_cache` [max_position, rotary_dim] float32 (cos | sin halves, both times yarn's
    attention factor); the math runs in float32 and the results come back in the input dtype.
    """

    def __init__(self, head_size: int, rotary_dim: int, max_position: int, params: dict[str, Any]) -> None:
        super().__init__()
        self.head_size = head_size
        self.rotary_dim = rotary_dim
        self.max_position = max_position
        inv_freq, scale = _scaled_inv_freq(_default_inv_freq(rotary_dim, float(params["rope_theta"])), params)
        inv_freq = inv_freq.to(self._device())
        positions = torch.arange(max_position, dtype=torch.float32, device=inv_freq.device)
        freqs = torch.outer(positions, inv_freq)                    # [max_position, rotary_dim / 2]
        cache = torch.cat([freqs.cos(), freqs.sin()], dim=-1) * scale
        self.register_buffer("cos_sin_cache", cache, persistent=False)

    @staticmethod
    def _device() -> torch.device:
        return torch.empty(0).device  # the ambient `with torch.device(...)` the model is built under

    def _rotate(self, x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
        """x: [T, N * head_size] -> same, rope applied to the first rotary_dim of every head."""
        num_tokens = x.shape[0]
        heads = x.view(num_tokens, -1, self.head_size).float()
        rot, rest = heads[..., : self.rotary_dim], heads[..., self.rotary_dim:]
        x1, x2 = rot.chunk(2, dim=-1)
        rotated = torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)
        out = torch.cat([rotated, rest], dim=-1) if rest.numel() else rotated
        return out.to(x.dtype).view(num_tokens, -1)

    def forward(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor):
        """positions: [T] int64 (< max_position); q: [T, H * D]; k: [T, Hkv * D] -> (q, k) rotated."""
        cos, sin = self.cos_sin_cache.index_select(0, positions).unsqueeze(1).chunk(2, dim=-1)
        return self._rotate(q, cos, sin), self._rotate(k, cos, sin)

    def norm_and_rotate(self, positions: torch.Tensor, q: torch.Tensor, k: torch.Tensor,
                        q_norm: nn.Module | None = None, k_norm: nn.Module | None = None):
        """Optional per-head RMSNorm (Qwen3's q_norm / k_norm, both or neither), then rope.

        positions: [T] int64; q: [T, H * D], k: [T, Hkv * D] (views into the qkv output are fine)
        -> new (q, k), contiguous. One Triton kernel on CUDA; norm modules then `forward` elsewhere.
        """
        if (q_norm is None) != (k_norm is None):
            raise ValueError("q_norm and k_norm must be given together")
        if use_fused(q):
            weights = (None, None) if q_norm is None else (q_norm.weight, k_norm.weight)
            eps = 0.0 if q_norm is None else q_norm.eps
            if k_norm is not None and k_norm.eps != eps:
                raise ValueError(f"k_norm.eps must equal q_norm.eps {eps}, got {k_norm.eps}")
            return load("qk_norm_rope").qk_norm_rope(q, k, positions, self.cos_sin_cache, *weights, eps,
                                                     self.head_size)
        if q_norm is not None:
            q, k = self._norm_heads(q_norm, q), self._norm_heads(k_norm, k)
        return self.forward(positions, q, k)

    def qk_rope(self, positions: torch.Tensor, q_norm: nn.Module | None = None,
                k_norm: nn.Module | None = None) -> QKRope:
        """The same transform as `norm_and_rotate(positions, q, k, q_norm, k_norm)`, described for
        `Attention` (which may fuse it into the attention kernel) instead of applied now."""
        if (q_norm is None) != (k_norm is None):
            raise ValueError("q_norm and k_norm must be given together")
        if k_norm is not None and k_norm.eps != q_norm.eps:
            raise ValueError(f"k_norm.eps must equal q_norm.eps {q_norm.eps}, got {k_norm.eps}")
        return QKRope(positions, self.cos_sin_cache, None if q_norm is None else q_norm.weight,
                      None if k_norm is None else k_norm.weight, 0.0 if q_norm is None else q_norm.eps,
                      functools.partial(self._apply, positions, q_norm, k_norm))

    def _apply(self, positions, q_norm, k_norm, q, k):
        return self.norm_and_rotate(positions, q, k, q_norm, k_norm)

    def _norm_heads(self, norm: nn.Module, x: torch.Tensor) -> torch.Tensor:
        """x: [T, N * head_size] -> norm applied to each head, same shape."""
        num_tokens = x.shape[0]
        return norm(x.view(num_tokens, -1, self.head_size)).view(num_tokens, -1)


def get_rope(hf_config, head_size: int) -> RotaryEmbedding:
    """The rotary embedding a Hugging Face config asks for."""
    params = rope_parameters(hf_config)
    partial = params.get("partial_rotary_factor", getattr(hf_config, "partial_rotary_factor", 1.0)) or 1.0
    rotary_dim = int(head_size * partial)
    return RotaryEmbedding(head_size, rotary_dim, derived_max_model_len(hf_config), params)
