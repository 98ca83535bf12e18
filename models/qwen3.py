"""Qwen3: the common decoder with an RMSNorm over each q and k head before rope."""
from __future__ import annotations

from models.causal_lm import DecoderForCausalLM
from models.decoder import DecoderSpec, check_decoder_config


class Qwen3ForCausalLM(DecoderForCausalLM):
    architectures = ("Qwen3ForCausalLM",)

    @classmethod
    def spec_for(cls, hf_config) -> DecoderSpec:
        check_decoder_config(hf_config)
        return DecoderSpec(qkv_bias=bool(getattr(hf_config, "attention_bias", False)), qk_norm=True,
                           o_bias=bool(getattr(hf_config, "attention_bias", False)))
