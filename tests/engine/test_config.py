"""EngineConfig's kv_cache_dtype: validation, the dtype it resolves to, the flags that set it, and
what it does to the KV cache's size per block."""
import argparse

import pytest
import torch

from engine.config import KV_CACHE_DTYPES, EngineConfig, ModelConfig


def test_kv_cache_dtype_defaults_to_the_model_dtype():
    config = EngineConfig(model="preset:tiny-qwen3")
    assert config.kv_cache_dtype == "auto"
    for model_dtype in (torch.float32, torch.bfloat16, torch.float16):
        assert config.kv_cache_torch_dtype(model_dtype) is model_dtype


@pytest.mark.parametrize("name", ["fp8", "fp8_e4m3"])
def test_fp8_names_mean_e4m3fn(name):
    config = EngineConfig(model="preset:tiny-qwen3", kv_cache_dtype=name)
    assert config.kv_cache_torch_dtype(torch.bfloat16) is torch.float8_e4m3fn
    assert config.kv_cache_torch_dtype(torch.float32) is torch.float8_e4m3fn


@pytest.mark.parametrize("bad", ["FP8", "fp8_e5m2", "float16", "int8", ""])
def test_unknown_kv_cache_dtype_lists_the_allowed_values(bad):
    with pytest.raises(ValueError) as err:
        EngineConfig(model="preset:tiny-qwen3", kv_cache_dtype=bad)
    message = str(err.value)
    assert message.startswith("kv_cache_dtype must be one of ('auto', 'fp8', 'fp8_e4m3')")
    assert repr(bad) in message
    assert set(KV_CACHE_DTYPES) == {"auto", "fp8", "fp8_e4m3"}


def test_serve_flag_sets_kv_cache_dtype(capsys):
    from engine.serve import build_parser, config_from_args
    parser = build_parser()
    assert config_from_args(parser.parse_args(["--model", "m"])).kv_cache_dtype == "auto"
    assert config_from_args(parser.parse_args(["--model", "m", "--kv-cache-dtype", "fp8"])).kv_cache_dtype == "fp8"
    with pytest.raises(SystemExit):
        parser.parse_args(["--model", "m", "--kv-cache-dtype", "int8"])
    assert "invalid choice: 'int8'" in capsys.readouterr().err


def test_bench_flag_reaches_the_engine_arguments():
    from engine.bench.common import add_engine_args, engine_kwargs
    parser = argparse.ArgumentParser()
    add_engine_args(parser)
    assert engine_kwargs(parser.parse_args([]))["kv_cache_dtype"] == "auto"
    kwargs = engine_kwargs(parser.parse_args(["--kv-cache-dtype", "fp8_e4m3"]))
    assert EngineConfig(model="m", **kwargs).kv_cache_dtype == "fp8_e4m3"


def test_fp8_block_takes_half_the_bytes_of_bf16():
    from engine.kv_sizing import bytes_per_block
    mc = ModelConfig(architecture="Qwen3ForCausalLM", num_layers=28, hidden_size=1024, num_heads=16,
                     num_kv_heads=8, head_size=128, vocab_size=151936, derived_max_model_len=40960,
                     eos_token_ids=(1,), checkpoint_dtype=torch.bfloat16)
    bf16 = bytes_per_block(mc, 16, torch.bfloat16)
    assert bf16 == 2 * 28 * 16 * 8 * 128 * 2
    assert bytes_per_block(mc, 16, torch.float8_e4m3fn) * 2 == bf16
