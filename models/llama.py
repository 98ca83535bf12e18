"""Llama 3.x (and Mistral, same layout): the common decoder; rope scaling "llama3" comes from the config."""
from __future__ import annotations

from models.causal_lm import DecoderForCausalLM
from models.decoder import DecoderSpec, check_decoder_config


class LlamaForCausalLM(DecoderForCausalLM):
    architectures = ("LlamaForCausalLM", "MistralForCausalLM")

    @classmethod
    def spec_for(cls, hf_config) -> DecoderSpec:
        check_decoder_config(hf_config)
        attention_bias = bool(getattr(hf_config, "attention_bias", False))
        return DecoderSpec(qkv_bias=attention_bias, o_bias=attention_bias,
                           mlp_bias=bool(getattr(hf_config, "mlp_bias", False)))
