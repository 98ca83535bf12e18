"""Engine models vs transformers on tiny random checkpoints, run through the paged torch_ref backend."""
from __future__ import annotations

import os

import pytest
import torch

from models.loader import build_model, resolve_model
from tests.models.helpers import PagedRunner, hf_logits, make_checkpoint, max_rel_err

TOL = 1e-4
PRESETS = ["tiny-qwen3", "tiny-llama", "tiny-qwen2"]


def load_engine_model(folder):
    resolved = resolve_model(str(folder))
    model = build_model(resolved.hf_config, resolved.path, "auto", torch.float32, torch.device("cpu"))
    return model, resolved.hf_config


def random_prompts(lens, vocab_size, seed):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab_size, (n,), generator=gen).tolist() for n in lens]


@pytest.fixture(scope="module", params=PRESETS)
def checkpoint(request, tmp_path_factory):
    folder = tmp_path_factory.mktemp(request.param)
    hf_model = make_checkpoint(request.param, folder, seed=len(request.param))
    return request.param, folder, hf_model


def test_packed_prefill_matches_transformers(checkpoint):
    _, folder, hf_model = checkpoint
    model, config = load_engine_model(folder)
    prompts = random_prompts([7, 13, 3], config.vocab_size, seed=1)
    logits = PagedRunner(model, config, len(prompts), max_len=16).step(prompts)
    ends = torch.tensor([len(p) for p in prompts]).cumsum(0)
    for r, prompt in enumerate(prompts):
        ref = hf_logits(hf_model, prompt)
        ours = logits[ends[r] - len(prompt): ends[r]]
        assert max_rel_err(ours[-1], ref[-1]) < TOL, f"request {r}: last-position logits differ"
        assert max_rel_err(ours, ref) < TOL, f"request {r}: logits differ"


def test_chunked_prefill_and_decode_match_transformers(checkpoint):
    """Requests continue from cached context: a chunk of prefill next to single-token decodes."""
    _, folder, hf_model = checkpoint
    model, config = load_engine_model(folder)
    prompts = random_prompts([12, 9], config.vocab_size, seed=2)
    runner = PagedRunner(model, config, 2, max_len=16, seed=3)
    splits = [[(0, 5), (0, 7)], [(5, 11), (7, 8)], [(11, 12), (8, 9)]]  # [start, end) per request per step
    refs = [hf_logits(hf_model, p) for p in prompts]
    for step in splits:
        logits = runner.step([prompts[r][a:b] for r, (a, b) in enumerate(step)])
        offset = 0
        for r, (a, b) in enumerate(step):
            assert max_rel_err(logits[offset: offset + b - a], refs[r][a:b]) < TOL, f"request {r} tokens {a}:{b}"
            offset += b - a


def test_sharded_safetensors_load(tmp_path):
    hf_model = make_checkpoint("tiny-llama", tmp_path, seed=5, max_shard_size="40KB")
    shards = [n for n in os.listdir(tmp_path) if n.endswith(".safetensors")]
    assert len(shards) > 1 and (tmp_path / "model.safetensors.index.json").exists()
    model, config = load_engine_model(tmp_path)
    prompt = random_prompts([6], config.vocab_size, seed=6)[0]
    logits = PagedRunner(model, config, 1, max_len=8).step([prompt])
    assert max_rel_err(logits, hf_logits(hf_model, prompt)) < TOL


def test_tied_embeddings_share_the_head(tmp_path):
    hf_model = make_checkpoint("tiny-qwen3", tmp_path, seed=7)
    assert hf_model.config.tie_word_embeddings
    model, _ = load_engine_model(tmp_path)
    assert model.lm_head.weight is model.model.embed_tokens.weight
    torch.testing.assert_close(model.lm_head.weight, hf_model.lm_head.weight, rtol=0, atol=0)
    # A checkpoint that stores lm_head.weight anyway (some do) still loads.
    weights = list(hf_model.state_dict().items()) + [("lm_head.weight", hf_model.lm_head.weight)]
    model.load_weights(weights)
