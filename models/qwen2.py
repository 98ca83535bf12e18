"""Qwen2 / Qwen2.5: the common decoder with biases on q, k and v (none on o_proj)."""
from __future__ import annotations

from models.causal_lm import DecoderForCausalLM
from models.decoder import DecoderSpec, check_decoder_config


class Qwen2ForCausalLM(DecoderForCausalLM):
    architectures = ("Qwen2ForCausalLM",)

    @classmethod
    def spec_for(cls, hf_config) -> DecoderSpec:
        check_decoder_config(hf_config)
        return DecoderSpec(qkv_bias=True)
