"""What the loader refuses before building a model, with errors that say what to change: a folder
without a tokenizer, architectures and checkpoints the engine cannot run (checked before a hub
checkpoint's weights are downloaded)."""
from __future__ import annotations

import json
import os
import shutil

import huggingface_hub
import pytest
import torch
import transformers
from huggingface_hub.utils import filter_repo_objects

from models.loader import (CONFIG_FILES, SAFETENSORS_INDEX, TOKENIZER_FILES, build_model, load_tokenizer,
                           resolve_model)
from models.presets import tiny_qwen3
from models.tokenizer import byte_tokenizer
from tests.models.helpers import make_checkpoint

TINY = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
            num_key_value_heads=2, vocab_size=512, max_position_embeddings=2048)


def test_model_folder_without_tokenizer_files_is_an_error(tmp_path):
    """transformers 5 builds an empty tokenizer (every text -> no ids) from a folder with only config.json."""
    tiny_qwen3().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model folder .* has no tokenizer .*tokenizer\.json.*--tokenizer"):
        load_tokenizer(resolve_model(str(tmp_path)))
    other = tmp_path / "tok"
    byte_tokenizer().save_pretrained(other)
    tokenizer = load_tokenizer(resolve_model(str(tmp_path)), str(other))
    assert tokenizer("hi").input_ids == [ord("h"), ord("i")]


def test_given_tokenizer_folder_without_files_is_an_error(tmp_path):
    tiny_qwen3().save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="tokenizer folder .*empty.* has no tokenizer"):
        load_tokenizer(resolve_model(str(tmp_path)), str(empty))


def save_config(folder, config) -> str:
    config.save_pretrained(folder)
    byte_tokenizer().save_pretrained(folder)
    return str(folder)


def test_unsupported_architecture_is_refused_by_name(tmp_path):
    """Phi-3's config used to fail on its rope type ('longrope'), not on its architecture."""
    phi3 = transformers.Phi3Config(architectures=["Phi3ForCausalLM"], **TINY, rope_parameters={
        "rope_type": "longrope", "rope_theta": 1e4, "short_factor": [1.0] * 8, "long_factor": [1.0] * 8,
        "original_max_position_embeddings": 512})
    with pytest.raises(ValueError, match=r"architectures \['Phi3ForCausalLM'\] are not supported; supported: "
                                         r"LlamaForCausalLM, MistralForCausalLM, Qwen2ForCausalLM, Qwen3ForCausalLM"):
        resolve_model(save_config(tmp_path, phi3))
    config = tiny_qwen3()
    config.architectures = []
    with pytest.raises(ValueError, match="names no architecture .*hf_overrides"):
        resolve_model(save_config(tmp_path, config))
    resolved = resolve_model(str(tmp_path), hf_overrides={"architectures": ["Qwen3ForCausalLM"]})
    assert resolved.hf_config.architectures == ["Qwen3ForCausalLM"]


def test_quantized_checkpoint_is_refused(tmp_path):
    """An FP8 / AWQ / GPTQ checkpoint used to fail on its first scale tensor ('unknown weight ...')."""
    config = tiny_qwen3()
    config.quantization_config = {"quant_method": "fp8", "fmt": "e4m3", "weight_block_size": [128, 128]}
    with pytest.raises(ValueError, match="quantized checkpoints are not supported .*'fp8'.*unquantized"):
        resolve_model(save_config(tmp_path, config))


class FakeHub:
    """huggingface_hub.snapshot_download over a folder holding one model at commit COMMIT: the repository's
    files (subfolders' too, by their relative paths) picked by huggingface_hub's own pattern filter."""

    COMMIT = "0123456789abcdef0123456789abcdef01234567"

    def __init__(self, source) -> None:
        self.source, self.calls, self.cache_dirs = source, [], []

    def __call__(self, repo_id, revision=None, allow_patterns=None, ignore_patterns=None, cache_dir=None):
        self.calls.append((revision, list(allow_patterns)))
        self.cache_dirs.append(cache_dir)
        snapshot = self.source.parent / "snapshots" / self.COMMIT
        files = sorted(f.relative_to(self.source).as_posix() for f in self.source.rglob("*") if f.is_file())
        for name in filter_repo_objects(files, allow_patterns=allow_patterns, ignore_patterns=ignore_patterns):
            (snapshot / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(self.source / name, snapshot / name)
        return str(snapshot)


def test_hub_config_is_checked_before_the_weights_are_downloaded(tmp_path, monkeypatch):
    source = tmp_path / "repo"
    gemma = transformers.GemmaConfig(architectures=["GemmaForCausalLM"], head_dim=16, **TINY)
    save_config(source, gemma)
    hub = FakeHub(source)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    with pytest.raises(ValueError, match=r"\['GemmaForCausalLM'\] are not supported"):
        resolve_model("someone/gemma-like")
    assert hub.calls == [(None, CONFIG_FILES)]                # nothing but config files fetched
    save_config(source, tiny_qwen3())
    hub.calls.clear()
    resolved = resolve_model("someone/qwen3-like", revision="main")
    assert resolved.path.endswith(FakeHub.COMMIT) and not resolved.is_preset
    assert hub.calls[0] == ("main", CONFIG_FILES)
    assert all(revision == FakeHub.COMMIT for revision, _ in hub.calls[1:])    # the rest: the same commit
    assert load_tokenizer(resolved)("a").input_ids == [ord("a")]


def test_hub_weights_are_the_files_the_index_names(tmp_path, monkeypatch):
    """Mistral's repositories also hold consolidated.safetensors, another copy of every weight."""
    source = tmp_path / "repo"
    hf_model = make_checkpoint("tiny-llama", source, max_shard_size="40KB")
    (source / "consolidated.safetensors").write_bytes(b"not fetched")
    hub = FakeHub(source)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    resolved = resolve_model("someone/llama-like")
    shards = sorted(json.loads((source / SAFETENSORS_INDEX).read_text())["weight_map"].values())
    assert len(set(shards)) > 1 and hub.calls[-1] == (FakeHub.COMMIT, sorted(set(shards)))
    assert not os.path.exists(os.path.join(resolved.path, "consolidated.safetensors"))
    model = build_model(resolved.hf_config, resolved.path, "auto", torch.float32, torch.device("cpu"))
    torch.testing.assert_close(model.lm_head.weight, hf_model.lm_head.weight, rtol=0, atol=0)
    hub.calls.clear()
    resolve_model("someone/llama-like", load_format="dummy")
    assert not any(p.endswith(".safetensors") for _, patterns in hub.calls for p in patterns)


def test_hub_weights_without_an_index_are_the_top_level_files(tmp_path, monkeypatch):
    """fnmatch's `*` matches '/': "*.safetensors" alone also fetched a subfolder's other variants of the
    weights (original/, onnx/), which `safetensors_files` never reads."""
    source = tmp_path / "repo"
    hf_model = make_checkpoint("tiny-llama", source)
    assert not (source / SAFETENSORS_INDEX).exists()
    for variant in ("original/consolidated.safetensors", "onnx/deep/model.safetensors"):
        (source / variant).parent.mkdir(parents=True, exist_ok=True)
        (source / variant).write_bytes(b"not fetched")
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(source))
    resolved = resolve_model("someone/llama-like")
    assert sorted(os.listdir(resolved.path)) == sorted(["config.json", "generation_config.json",
                                                        "model.safetensors"])
    model = build_model(resolved.hf_config, resolved.path, "auto", torch.float32, torch.device("cpu"))
    torch.testing.assert_close(model.lm_head.weight, hf_model.lm_head.weight, rtol=0, atol=0)


def test_download_dir_is_the_hub_cache_of_every_download(tmp_path, monkeypatch):
    """vLLM's --download-dir: config, tokenizer and weights all go to (and come from) that cache."""
    source = tmp_path / "repo"
    make_checkpoint("tiny-llama", source)
    hub = FakeHub(source)
    monkeypatch.setattr(huggingface_hub, "snapshot_download", hub)
    resolved = resolve_model("someone/llama-like", download_dir=str(tmp_path / "cache"))
    assert len(hub.calls) == 3 and hub.cache_dirs == [str(tmp_path / "cache")] * 3
    assert resolved.hub_id == "someone/llama-like"
    hub.cache_dirs.clear()
    resolve_model("someone/llama-like")
    assert hub.cache_dirs == [None] * 3


class FakeAutoTokenizer:
    """AutoTokenizer.from_pretrained recording its calls, answering with the byte tokenizer."""

    calls: list = []

    @classmethod
    def from_pretrained(cls, source, **kwargs):
        cls.calls.append((source, kwargs))
        return byte_tokenizer()


def test_tokenizer_revision_loads_the_hub_tokenizer_at_that_revision(tmp_path, monkeypatch):
    """vLLM's --tokenizer-revision: --tokenizer's revision, else the model's hub id's; a local folder or
    a preset has no revision to take, which is an error naming the flag."""
    source = tmp_path / "repo"
    save_config(source, tiny_qwen3())
    monkeypatch.setattr(huggingface_hub, "snapshot_download", FakeHub(source))
    monkeypatch.setattr("models.loader.AutoTokenizer", FakeAutoTokenizer)
    FakeAutoTokenizer.calls = []
    resolved = resolve_model("someone/qwen3-like")
    load_tokenizer(resolved, revision="v2", download_dir="/cache")
    load_tokenizer(resolved, "someone/tokenizer", revision="v3")
    assert [(s, k["revision"], k["cache_dir"]) for s, k in FakeAutoTokenizer.calls] == [
        ("someone/qwen3-like", "v2", "/cache"), ("someone/tokenizer", "v3", None)]
    with pytest.raises(ValueError, match="tokenizer_revision 'v2' names a hub revision, but the tokenizer is the "
                                         "local folder .*--tokenizer-revision"):
        load_tokenizer(resolve_model(str(source)), revision="v2")
    with pytest.raises(ValueError, match="the preset's built-in byte tokenizer"):
        load_tokenizer(resolve_model("preset:tiny-qwen3"), revision="v2")


@pytest.mark.parametrize("arch", ["Qwen3", "Qwen2"])
def test_sliding_window_layers_are_refused(tmp_path, arch):
    """Qwen3 with use_sliding_window used to load and attend to the whole context where transformers
    slides; layers below max_window_layers are full attention, so all-full configs load (Qwen2 refused them)."""
    config_cls = getattr(transformers, f"{arch}Config")
    sliding = config_cls(architectures=[f"{arch}ForCausalLM"], use_sliding_window=True, sliding_window=4,
                         max_window_layers=1, **TINY)
    with pytest.raises(ValueError, match=r"layers 1 use sliding-window attention \(sliding_window 4, "
                                         r"layer_types \['full_attention', 'sliding_attention'\]\)"):
        resolve_model(save_config(tmp_path, sliding))
    full = config_cls(architectures=[f"{arch}ForCausalLM"], use_sliding_window=True, sliding_window=4,
                      max_window_layers=2, **TINY)
    assert resolve_model(save_config(tmp_path, full)).hf_config.layer_types == ["full_attention"] * 2


def test_mistral_window_shorter_than_the_context_is_refused(tmp_path):
    def mistral(window):
        return transformers.MistralConfig(architectures=["MistralForCausalLM"], sliding_window=window, **TINY)

    with pytest.raises(ValueError, match=r"layers 0, 1 use sliding-window attention \(sliding_window 1024"):
        resolve_model(save_config(tmp_path, mistral(1024)))
    for window in (None, 2048):
        resolve_model(save_config(tmp_path, mistral(window)))


def test_hf_overrides_function_must_return_the_config(tmp_path):
    """One that changes the config in place and returns nothing used to read as 'names no architecture'."""
    folder = save_config(tmp_path, tiny_qwen3())
    with pytest.raises(ValueError, match="hf_overrides function returned None; it must return the config"):
        resolve_model(folder, hf_overrides=lambda config: setattr(config, "max_position_embeddings", 4096))
    resolved = resolve_model(folder, hf_overrides=lambda config: setattr(config, "max_position_embeddings", 4096)
                             or config)
    assert resolved.hf_config.max_position_embeddings == 4096


@pytest.mark.parametrize("act", ["gelu", "gelu_pytorch_tanh"])
def test_an_mlp_activation_other_than_silu_is_refused(tmp_path, act):
    """The decoder's MLP is SiLU-and-mul; a gelu config used to load and run as SiLU (vLLM refuses it)."""
    with pytest.raises(ValueError, match=rf"hidden_act '{act}' is not supported.*hidden_act \"silu\""):
        resolve_model(save_config(tmp_path, transformers.LlamaConfig(architectures=["LlamaForCausalLM"],
                                                                     hidden_act=act, **TINY)))
    resolve_model(save_config(tmp_path, transformers.LlamaConfig(architectures=["LlamaForCausalLM"], **TINY)))
