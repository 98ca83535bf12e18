"""`Attention`: the only attention module models use; it delegates to the chosen backend's Impl."""
from __future__ import annotations

import torch
from torch import nn

from attention.backend import AttentionImpl
from attention.forward_context import get_attn_metadata
from attention.qk_rope import QKRope


class Attention(nn.Module):
    """Paged attention over the layer's KV cache.

    The model runner binds `impl` (the selected backend's Impl) and `kv_cache` (this layer's cache
    tensor) after the model is built; see `bind_attention_layers`.
    """

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int,
                 layer_idx: int) -> None:
        super().__init__()
        if num_heads % num_kv_heads:
            raise ValueError(f"num_heads ({num_heads}) must be a multiple of num_kv_heads ({num_kv_heads})")
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads
        self.layer_idx = layer_idx
        self.impl: AttentionImpl | None = None
        self.kv_cache: torch.Tensor | None = None

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                qk_rope: QKRope | None = None) -> torch.Tensor:
        """q: [T, num_heads * head_size]; k, v: [T, num_kv_heads * head_size] -> [T, num_heads * head_size].

        qk_rope: the q/k norm and rope still to apply (before the K/V store); the backend fuses it
        into its kernel when it can (`impl.fuses_qk_rope`), else it is applied here first."""
        if self.impl is None or self.kv_cache is None:
            raise RuntimeError("Attention layer has no backend bound: build the model through the model runner")
        metadata = get_attn_metadata()
        fused = qk_rope is not None and self.impl.fuses_qk_rope(metadata, qk_rope)
        if qk_rope is not None and not fused:
            q, k = qk_rope.apply(q, k)
        num_tokens = q.shape[0]
        output = torch.empty(num_tokens, self.num_heads, self.head_size, dtype=q.dtype, device=q.device)
        self.impl.forward(
            q.view(num_tokens, self.num_heads, self.head_size),
            k.view(num_tokens, self.num_kv_heads, self.head_size),
            v.view(num_tokens, self.num_kv_heads, self.head_size),
            self.kv_cache, metadata, output, **({"qk_rope": qk_rope} if fused else {}))
        return output.view(num_tokens, self.num_heads * self.head_size)


def bind_attention_layers(model: nn.Module, impl_cls: type[AttentionImpl],
                          kv_caches: list[torch.Tensor]) -> list[Attention]:
    """Give every `Attention` in `model` an Impl and its layer's cache; return the layers in order."""
    layers = sorted((m for m in model.modules() if isinstance(m, Attention)), key=lambda m: m.layer_idx)
    if len(layers) != len(kv_caches):
        raise ValueError(f"model has {len(layers)} attention layers but {len(kv_caches)} KV caches were given")
    for layer, cache in zip(layers, kv_caches):
        layer.impl = impl_cls(layer.num_heads, layer.head_size, layer.scale, layer.num_kv_heads)
        layer.kv_cache = cache
    return layers
