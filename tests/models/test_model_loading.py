"""Loader, registry and presets: errors, dummy weights, published shapes."""
from __future__ import annotations

import gc
import weakref

import huggingface_hub.constants
import pytest
import torch
import transformers

from models.loader import build_model, resolve_model
from models.presets import get_preset, preset_names
from models.registry import get_model_class
from tests.models.helpers import PagedRunner, make_checkpoint

# Published parameter counts of the real checkpoints.
PUBLISHED_NUM_PARAMS = {"llama-3.1-8b": 8_030_261_248, "qwen3-8b": 8_190_735_360, "qwen3-0.6b": 596_049_920}


def test_unknown_weight_name_is_an_error():
    model = build_model(get_preset("tiny-qwen2"), None, "dummy", torch.float32, torch.device("cpu"))
    with pytest.raises(ValueError, match=r"model\.layers\.0\.self_attn\.rope_bias\.weight"):
        model.load_weights([("model.layers.0.self_attn.rope_bias.weight", torch.zeros(4))])


def test_missing_and_misshaped_weights_are_errors(tmp_path):
    hf_model = make_checkpoint("tiny-qwen2", tmp_path)
    model = build_model(hf_model.config, None, "dummy", torch.float32, torch.device("cpu"))
    weights = dict(hf_model.state_dict())
    del weights["model.layers.1.self_attn.k_proj.bias"]
    with pytest.raises(ValueError, match=r"model\.layers\.1\.self_attn\.qkv_proj\.bias"):
        model.load_weights(weights.items())
    weights = dict(hf_model.state_dict())
    weights["model.layers.0.mlp.up_proj.weight"] = torch.zeros(3, 3)
    with pytest.raises(ValueError, match=r"model\.layers\.0\.mlp\.up_proj\.weight.*\(3, 3\)"):
        model.load_weights(weights.items())


def test_inv_freq_in_checkpoint_is_ignored(tmp_path):
    hf_model = make_checkpoint("tiny-llama", tmp_path)
    model = build_model(hf_model.config, None, "dummy", torch.float32, torch.device("cpu"))
    weights = list(hf_model.state_dict().items())
    weights.append(("model.layers.0.self_attn.rotary_emb.inv_freq", torch.ones(8)))
    model.load_weights(weights)


@pytest.mark.parametrize("preset", ["tiny-qwen3", "tiny-llama", "tiny-qwen2"])
def test_dummy_preset_builds_and_runs(preset):
    resolved = resolve_model(f"preset:{preset}")
    assert resolved.is_preset and resolved.path is None
    config = resolved.hf_config
    models = [build_model(config, None, "dummy", torch.float32, torch.device("cpu")) for _ in range(2)]
    assert not models[0].training
    outs = [PagedRunner(m, config, 2, max_len=8).step([[1, 2, 3], [258, 4]]) for m in models]
    assert outs[0].shape == (5, config.vocab_size) and outs[0].dtype == torch.float32
    assert torch.isfinite(outs[0]).all()
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)  # fixed seed
    assert outs[0].std() > 0


def test_dummy_build_in_bfloat16_keeps_norms_near_one():
    model = build_model(get_preset("tiny-llama"), None, "dummy", torch.bfloat16, torch.device("cpu"))
    assert all(p.dtype == torch.bfloat16 for p in model.parameters())
    norm = model.model.layers[0].input_layernorm.weight
    assert (norm - 1).abs().max() < 0.01
    assert model.model.layers[0].self_attn.rotary_emb.cos_sin_cache.dtype == torch.float32
    assert len({id(layer.self_attn.rotary_emb) for layer in model.model.layers}) == 1  # one shared cache


@pytest.mark.parametrize("preset", ["qwen3-0.6b", "qwen3-8b", "llama-3.1-8b"])
def test_large_presets_have_published_shapes(preset):
    """Built on the meta device: same parameter count as transformers and as published."""
    config = get_preset(preset)
    with torch.device("meta"):
        ours = get_model_class(config.architectures)(config)
        theirs = getattr(transformers, config.architectures[0])(config)
    num_ours = sum(p.numel() for p in ours.parameters())
    assert num_ours == sum(p.numel() for p in theirs.parameters())
    assert num_ours == PUBLISHED_NUM_PARAMS[preset]


def test_unknown_preset_lists_presets():
    with pytest.raises(ValueError, match="presets: .*tiny-qwen3"):
        resolve_model("preset:no-such-model")
    assert {"qwen3-0.6b", "qwen3-8b", "llama-3.1-8b", "tiny-qwen3", "tiny-llama", "tiny-qwen2"} <= set(preset_names())


def test_registry():
    assert get_model_class(["MistralForCausalLM"]) is get_model_class("LlamaForCausalLM")
    with pytest.raises(ValueError, match="supported: .*Qwen3ForCausalLM"):
        get_model_class(["GPT2LMHeadModel"])


def test_preset_without_weights_needs_dummy():
    with pytest.raises(ValueError, match="dummy"):
        build_model(get_preset("tiny-qwen3"), None, "auto", torch.float32, torch.device("cpu"))


def test_folder_without_config_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="config.json"):
        resolve_model(str(tmp_path))


def test_folder_without_safetensors_is_an_error(tmp_path):
    get_preset("tiny-qwen3").save_pretrained(tmp_path)
    resolved = resolve_model(str(tmp_path))
    with pytest.raises(ValueError, match="no .safetensors"):
        build_model(resolved.hf_config, resolved.path, "auto", torch.float32, torch.device("cpu"))


def test_hub_id_offline_gives_clear_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(ValueError, match="pass a local folder with config.json, or a preset"):
        resolve_model("someone/not-a-real-model-xyz")


def test_deleted_model_is_freed_without_the_garbage_collector():
    """No module <-> parameter reference cycle: GPU memory comes back as soon as the model goes."""
    model = build_model(get_preset("tiny-llama"), None, "dummy", torch.float32, torch.device("cpu"))
    weight = weakref.ref(model.model.layers[0].self_attn.qkv_proj.weight)
    gc.disable()
    try:
        del model
        assert weight() is None
    finally:
        gc.enable()
