"""Llama 3.x (and Mistral, same layout): the common decoder; rope scaling "llama3" comes from the config."""
from __future__ import annotations

from models.causal_lm import DecoderForCausalLM
from models.decoder import DecoderSpec


class LlamaForCausalLM(DecoderForCausalLM):
    architectures = ("LlamaForCausalLM", "MistralForCausalLM")

    @classmethod
    def spec_for(cls, hf_config) -> DecoderSpec:
        window = getattr(hf_config, "sliding_window", None)
        if window and window < getattr(hf_config, "max_position_embeddings", window + 1):
            raise ValueError(f"sliding_window ({window}) attention is not supported; it must be null or at "
                             f"least max_position_embeddings")
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        return DecoderSpec(qkv_bias=attention_bias, o_bias=attention_bias,
                           mlp_bias=bool(getattr(hf_config, "mlp_bias", False)))
