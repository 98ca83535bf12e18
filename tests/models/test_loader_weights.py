"""The checkpoint's files and tensors: a shard the index names but the folder lacks, extra tensors
that are no weights."""
from __future__ import annotations

import os

import pytest
import torch

from models.loader import build_model, resolve_model
from tests.models.helpers import make_checkpoint


def test_a_shard_missing_from_the_folder_is_named_before_loading(tmp_path, monkeypatch):
    """An interrupted download: the error used to come from safe_open, after reading every other shard."""
    make_checkpoint("tiny-llama", tmp_path, max_shard_size="40KB")
    shards = sorted(n for n in os.listdir(tmp_path) if n.endswith(".safetensors"))
    os.remove(tmp_path / shards[-1])
    resolved = resolve_model(str(tmp_path))
    opened = []
    monkeypatch.setattr("safetensors.safe_open", lambda *args, **kwargs: opened.append(args) or 1 / 0)
    with pytest.raises(ValueError, match=rf"names 1 file\(s\) the folder lacks: {shards[-1]}; download"):
        build_model(resolved.hf_config, resolved.path, "auto", torch.float32, torch.device("cpu"))
    assert opened == []


@pytest.mark.parametrize("suffix", ["rotary_emb.inv_freq", "rotary_emb.cos_cached", "rotary_emb.sin_cached"])
def test_rotary_caches_in_a_checkpoint_are_skipped(tmp_path, suffix):
    """Some Llama checkpoints (older transformers, ColossalAI) carry rope tables; vLLM skips them too."""
    hf_model = make_checkpoint("tiny-llama", tmp_path)
    model = build_model(hf_model.config, None, "dummy", torch.float32, torch.device("cpu"))
    weights = list(hf_model.state_dict().items()) + [(f"model.layers.0.self_attn.{suffix}", torch.ones(8, 16))]
    model.load_weights(weights)
    torch.testing.assert_close(model.lm_head.weight, hf_model.lm_head.weight, rtol=0, atol=0)
