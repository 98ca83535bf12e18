"""Rope scaling (linear, yarn) and hf_overrides vs transformers: the rotary tables, the derived context
length, and a tiny checkpoint extended with yarn through hf_overrides against transformers."""
from __future__ import annotations

import pytest
import torch
import transformers

from models.hf_overrides import apply_hf_overrides, check_hf_overrides
from models.layers import get_rope
from models.layers.rotary import derived_max_model_len, rope_parameters
from models.loader import build_model, resolve_model
from models.presets import get_preset
from tests.models.helpers import (PagedRunner, assert_rope_matches_transformers, hf_logits, make_checkpoint,
                                  max_rel_err)

YARN_QWEN = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 32768}
SCALINGS = [
    YARN_QWEN,
    {"rope_type": "yarn", "factor": 2.5, "original_max_position_embeddings": 8192, "beta_fast": 16,
     "beta_slow": 2, "truncate": False},
    {"rope_type": "yarn", "factor": 8.0, "original_max_position_embeddings": 4096, "attention_factor": 0.9},
    {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 4096, "mscale": 1.0,
     "mscale_all_dim": 0.5},
    {"rope_type": "yarn", "factor": None, "original_max_position_embeddings": 10240},   # 40960 / 10240
    {"rope_type": "linear", "factor": 3.0},
]


def scaled_qwen3_8b(scaling: dict):
    return apply_hf_overrides(get_preset("qwen3-8b"), {"rope_parameters": scaling})


@pytest.mark.parametrize("scaling", SCALINGS, ids=lambda s: "-".join(f"{v}" for v in s.values()))
def test_scaled_rope_matches_transformers(scaling):
    config = scaled_qwen3_8b(scaling)
    assert_rope_matches_transformers(config, derived_max_model_len(config), num=11, tol=1e-4)


def test_derived_max_model_len_follows_vllm():
    assert derived_max_model_len(get_preset("qwen3-8b")) == 40960
    assert derived_max_model_len(get_preset("llama-3.1-8b")) == 131072           # llama3: as stated
    assert derived_max_model_len(scaled_qwen3_8b(YARN_QWEN)) == 131072           # original x factor
    assert derived_max_model_len(scaled_qwen3_8b({"rope_type": "linear", "factor": 2.0})) == 81920
    assert get_rope(scaled_qwen3_8b(YARN_QWEN), 128).cos_sin_cache.shape == (131072, 128)


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 0.5}, {"rope_type": "linear"},
                                     {"rope_type": "dynamic", "factor": 2.0}])
def test_bad_rope_scaling_is_refused(scaling):
    with pytest.raises(ValueError, match="factor|rope_type"):
        rope_parameters(scaled_qwen3_8b(scaling))


def test_overrides_merge_into_the_config():
    config = apply_hf_overrides(get_preset("qwen3-8b"), {"rope_scaling": {"type": "yarn", "factor": 4.0},
                                                        "max_position_embeddings": 1000, "new_field": [1]})
    params = rope_parameters(config)
    assert params["rope_type"] == "yarn" and params["factor"] == 4.0
    assert params["rope_theta"] == 1000000.0                      # kept from the checkpoint's rope
    assert config.max_position_embeddings == 1000 and config.new_field == [1]
    assert derived_max_model_len(config) == 4000                  # original defaults to max_position
    theta = apply_hf_overrides(get_preset("qwen3-8b"), {"rope_theta": 5e5, "partial_rotary_factor": 0.5})
    assert rope_parameters(theta)["rope_theta"] == 5e5 and get_rope(theta, 128).rotary_dim == 64
    switched = apply_hf_overrides(get_preset("llama-3.1-8b"), {"rope_scaling": {"rope_type": "yarn", "factor": 2.0}})
    params = rope_parameters(switched)
    assert "low_freq_factor" not in params and params["rope_theta"] == 500000.0     # llama3's keys are gone
    assert derived_max_model_len(switched) == 2 * 131072
    unscaled = apply_hf_overrides(get_preset("llama-3.1-8b"), {"rope_scaling": None})
    assert rope_parameters(unscaled) == {"rope_type": "default", "rope_theta": 500000.0}
    called = apply_hf_overrides(get_preset("qwen3-8b"), lambda c: setattr(c, "num_hidden_layers", 3) or c)
    assert called.num_hidden_layers == 3
    for bad in ([1], {1: 2}, "rope"):
        with pytest.raises(ValueError, match="hf_overrides"):
            check_hf_overrides(bad)
    with pytest.raises(ValueError, match="rope_parameters"):
        apply_hf_overrides(get_preset("qwen3-8b"), {"rope_parameters": 4.0})


@pytest.mark.parametrize("scaling", [{"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 64,
                                      "rope_theta": 10000.0},
                                     {"rope_type": "linear", "factor": 2.0}])
def test_checkpoint_extended_by_hf_overrides_matches_transformers(tmp_path, scaling):
    """A prompt past the original context, engine model (torch_ref) against transformers, same config."""
    make_checkpoint("tiny-qwen3", tmp_path, seed=5)
    overrides = {"rope_parameters": scaling, "max_position_embeddings": 128}
    resolved = resolve_model(str(tmp_path), hf_overrides=overrides)
    max_len = derived_max_model_len(resolved.hf_config)
    assert max_len == 256
    model = build_model(resolved.hf_config, resolved.path, "auto", torch.float32, torch.device("cpu"))
    hf_config = apply_hf_overrides(transformers.AutoConfig.from_pretrained(tmp_path), overrides)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(tmp_path, config=hf_config).eval()
    gen = torch.Generator().manual_seed(2)
    prompt = torch.randint(0, hf_config.vocab_size, (200,), generator=gen).tolist()
    runner = PagedRunner(model, resolved.hf_config, 1, max_len=max_len)
    ours = torch.cat([runner.step([prompt[:150]]), runner.step([prompt[150:]])])
    ref = hf_logits(hf_model, prompt)
    assert max_rel_err(ours, ref) < 1e-4
    plain = transformers.AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    assert max_rel_err(hf_logits(plain, prompt)[150:], ref[150:]) > 1e-2    # the scaling changes the logits
