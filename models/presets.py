"""Built-in architecture presets (`preset:NAME`): a transformers config and nothing to download.

The large ones have the published shapes of the real checkpoints (use them with dummy weights for
benchmarks); the tiny ones are for tests. All use the built-in byte tokenizer's special token ids.
"""
from __future__ import annotations

from typing import Callable

from transformers import LlamaConfig, PretrainedConfig, Qwen2Config, Qwen3Config

from models.tokenizer import special_token_id

_EOS_IDS = [special_token_id("<|endoftext|>"), special_token_id("<|im_end|>")]
_TOKEN_IDS = dict(bos_token_id=special_token_id("<|endoftext|>"), eos_token_id=_EOS_IDS,
                  pad_token_id=special_token_id("<|endoftext|>"))
_LLAMA31_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
                 "high_freq_factor": 4.0, "original_max_position_embeddings": 8192}


def _qwen3(**shape) -> Qwen3Config:
    return Qwen3Config(architectures=["Qwen3ForCausalLM"], rms_norm_eps=1e-6, hidden_act="silu",
                       attention_bias=False, **_TOKEN_IDS, **shape)


def qwen3_0_6b() -> Qwen3Config:
    return _qwen3(hidden_size=1024, intermediate_size=3072, num_hidden_layers=28, num_attention_heads=16,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                  tie_word_embeddings=True, dtype="bfloat16")


def qwen3_8b() -> Qwen3Config:
    return _qwen3(hidden_size=4096, intermediate_size=12288, num_hidden_layers=36, num_attention_heads=32,
                  num_key_value_heads=8, head_dim=128, vocab_size=151936, max_position_embeddings=40960,
                  rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                  tie_word_embeddings=False, dtype="bfloat16")


def llama_3_1_8b() -> LlamaConfig:
    return LlamaConfig(architectures=["LlamaForCausalLM"], hidden_size=4096, intermediate_size=14336,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=8, head_dim=128,
                       vocab_size=128256, max_position_embeddings=131072, rms_norm_eps=1e-5,
                       rope_parameters=dict(_LLAMA31_ROPE), tie_word_embeddings=False, attention_bias=False,
                       mlp_bias=False, dtype="bfloat16", **_TOKEN_IDS)


_TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048, dtype="float32")


def tiny_qwen3() -> Qwen3Config:
    return _qwen3(head_dim=32, rope_parameters={"rope_type": "default", "rope_theta": 1000000.0},
                  tie_word_embeddings=True, **_TINY)


def tiny_llama() -> LlamaConfig:
    rope = dict(_LLAMA31_ROPE, original_max_position_embeddings=256)
    return LlamaConfig(architectures=["LlamaForCausalLM"], head_dim=16, rms_norm_eps=1e-5, rope_parameters=rope,
                       tie_word_embeddings=False, **_TOKEN_IDS, **_TINY)


def tiny_qwen2() -> Qwen2Config:
    return Qwen2Config(architectures=["Qwen2ForCausalLM"], rms_norm_eps=1e-6, use_sliding_window=False,
                       rope_parameters={"rope_type": "default", "rope_theta": 10000.0},
                       tie_word_embeddings=False, **_TOKEN_IDS, **_TINY)


PRESETS: dict[str, Callable[[], PretrainedConfig]] = {
    "qwen3-0.6b": qwen3_0_6b,
    "qwen3-8b": qwen3_8b,
    "llama-3.1-8b": llama_3_1_8b,
    "tiny-qwen3": tiny_qwen3,
    "tiny-llama": tiny_llama,
    "tiny-qwen2": tiny_qwen2,
}


def preset_names() -> list[str]:
    return list(PRESETS)


def get_preset(name: str) -> PretrainedConfig:
    """A fresh config for preset `name`; ValueError listing the presets when it is unknown."""
    if name not in PRESETS:
        raise ValueError(f"preset {name!r} is unknown; presets: {', '.join(PRESETS)}")
    return PRESETS[name]()
