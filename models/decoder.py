"""The decoder stack shared by Llama, Qwen2 and Qwen3; the differences are flags in `DecoderSpec`.

All tensors are a flat batch of T tokens from many requests: no batch dimension, no attention mask.
Attention (with the KV cache) is done by `attention.Attention` from the step's forward context.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from attention import Attention
from models.layers import (MergedColumnParallelLinear, QKVParallelLinear, RMSNorm, RotaryEmbedding,
                           RowParallelLinear, VocabParallelEmbedding, get_rope)
from models.layers.tp import divide, get_tp_size


@dataclass(frozen=True)
class DecoderSpec:
    """How one architecture differs from the common decoder.

    qkv_bias: q/k/v projections have a bias. qk_norm: RMSNorm over each q and k head before rope.
    o_bias / mlp_bias: biases on the output and MLP projections.
    """

    qkv_bias: bool = False
    qk_norm: bool = False
    o_bias: bool = False
    mlp_bias: bool = False


def check_decoder_config(hf_config) -> None:
    """ValueError where the config asks for what the shared decoder does not do: an MLP activation
    other than SiLU (as vLLM's Llama MLP refuses it), or sliding-window layers (check_full_attention)."""
    act = getattr(hf_config, "hidden_act", "silu")
    if act != "silu":
        raise ValueError(f"hidden_act {act!r} is not supported: the decoder's MLP is SiLU-and-mul only; use a "
                         f"checkpoint whose config.json has hidden_act \"silu\"")
    check_full_attention(hf_config)


def check_full_attention(hf_config) -> None:
    """ValueError where some layer attends through a sliding window shorter than max_position_embeddings
    (transformers' `layer_types`, as Qwen2 / Qwen3 configs with use_sliding_window set them; without
    them a `sliding_window` applies to every layer, as Mistral's): every layer here sees the whole context."""
    window = getattr(hf_config, "sliding_window", None)
    layer_types = getattr(hf_config, "layer_types", None)
    if layer_types is not None:
        sliding = [i for i, kind in enumerate(layer_types) if kind != "full_attention"]
    elif window and getattr(hf_config, "use_sliding_window", True):
        sliding = list(range(hf_config.num_hidden_layers))
    else:
        sliding = []
    max_position = getattr(hf_config, "max_position_embeddings", None)
    if sliding and not (window and max_position and window >= max_position):
        shown = ", ".join(map(str, sliding[:8])) + (" ..." if len(sliding) > 8 else "")
        raise ValueError(f"layers {shown} use sliding-window attention (sliding_window {window}, layer_types "
                         f"{sorted(set(layer_types or ['sliding_attention']))}), which this engine does not "
                         f"support; use a checkpoint whose every layer has full attention (use_sliding_window "
                         f"false, or sliding_window null or at least max_position_embeddings)")


def head_size_of(hf_config) -> int:
    return getattr(hf_config, "head_dim", None) or hf_config.hidden_size // hf_config.num_attention_heads


class DecoderAttention(nn.Module):
    """hidden [T, hidden_size] -> [T, hidden_size]: fused qkv, optional q/k norm, rope, attention, o_proj.

    `rotary_emb` is shared by all layers (one cos/sin cache per model).
    """

    def __init__(self, hf_config, spec: DecoderSpec, layer_idx: int, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        total_heads = hf_config.num_attention_heads
        total_kv_heads = getattr(hf_config, "num_key_value_heads", None) or total_heads
        self.head_size = head_size_of(hf_config)
        self.qkv_proj = QKVParallelLinear(hf_config.hidden_size, self.head_size, total_heads, total_kv_heads,
                                          bias=spec.qkv_bias)
        self.num_heads, self.num_kv_heads = self.qkv_proj.num_heads, self.qkv_proj.num_kv_heads
        self.o_proj = RowParallelLinear(total_heads * self.head_size, hf_config.hidden_size, bias=spec.o_bias)
        self.q_norm = RMSNorm(self.head_size, hf_config.rms_norm_eps) if spec.qk_norm else None
        self.k_norm = RMSNorm(self.head_size, hf_config.rms_norm_eps) if spec.qk_norm else None
        self.rotary_emb = rotary_emb
        self.attn = Attention(self.num_heads, self.head_size, self.head_size ** -0.5, self.num_kv_heads,
                              layer_idx)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        q, k, v = self.qkv_proj(hidden).split(self.qkv_proj.output_split(), dim=-1)
        qk_rope = self.rotary_emb.qk_rope(positions, self.q_norm, self.k_norm)   # applied by the attention layer
        return self.o_proj(self.attn(q, k, v, qk_rope=qk_rope))


class DecoderMLP(nn.Module):
    """hidden [T, hidden_size] -> [T, hidden_size]: down(silu(gate(x)) * up(x)), gate/up fused."""

    def __init__(self, hidden_size: int, intermediate_size: int, bias: bool) -> None:
        super().__init__()
        divide(intermediate_size, get_tp_size(), "intermediate_size")
        self.gate_up_proj = MergedColumnParallelLinear(hidden_size, [intermediate_size] * 2, bias=bias)
        self.down_proj = RowParallelLinear(intermediate_size, hidden_size, bias=bias)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.down_proj(self.gate_up_proj.forward_silu_and_mul(hidden))


class DecoderLayer(nn.Module):
    """Pre-norm block; the residual stream is carried separately so the norms fuse the add."""

    def __init__(self, hf_config, spec: DecoderSpec, layer_idx: int, rotary_emb: RotaryEmbedding) -> None:
        super().__init__()
        eps = hf_config.rms_norm_eps
        self.input_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.self_attn = DecoderAttention(hf_config, spec, layer_idx, rotary_emb)
        self.post_attention_layernorm = RMSNorm(hf_config.hidden_size, eps)
        self.mlp = DecoderMLP(hf_config.hidden_size, hf_config.intermediate_size, spec.mlp_bias)

    def forward(self, positions: torch.Tensor, hidden: torch.Tensor, residual: torch.Tensor | None):
        """hidden, residual: [T, hidden_size] (residual None in the first layer) -> (hidden, residual)."""
        if residual is None:
            residual = hidden
            hidden = self.input_layernorm(hidden)
        else:
            hidden, residual = self.input_layernorm(hidden, residual)
        hidden = self.self_attn(positions, hidden)
        hidden, residual = self.post_attention_layernorm(hidden, residual)
        return self.mlp(hidden), residual


class DecoderModel(nn.Module):
    """input_ids [T] -> final normalised hidden states [T, hidden_size]."""

    def __init__(self, hf_config, spec: DecoderSpec) -> None:
        super().__init__()
        self.embed_tokens = VocabParallelEmbedding(hf_config.vocab_size, hf_config.hidden_size)
        rotary_emb = get_rope(hf_config, head_size_of(hf_config))
        self.layers = nn.ModuleList(DecoderLayer(hf_config, spec, i, rotary_emb)
                                    for i in range(hf_config.num_hidden_layers))
        self.norm = RMSNorm(hf_config.hidden_size, hf_config.rms_norm_eps)

    def forward(self, input_ids: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
        hidden, residual = self.embed_tokens(input_ids), None
        for layer in self.layers:
            hidden, residual = layer(positions, hidden, residual)
        hidden, _ = self.norm(hidden, residual)
        return hidden
