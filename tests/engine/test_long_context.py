"""max_model_len against the model's positions, a context extended with yarn through hf_overrides
(LLM(..., hf_overrides=...)) greedy against transformers on the same overridden config, and vLLM's engine
args checked at construction."""
import pytest
import torch
import transformers

from engine import LLM, SamplingParams
from models.hf_overrides import apply_hf_overrides
from tests.engine.test_generate_parity import hf_greedy

YARN = {"max_position_embeddings": 96,
        "rope_parameters": {"rope_type": "yarn", "factor": 2.0, "original_max_position_embeddings": 96}}


def test_max_model_len_past_the_positions_is_refused(qwen3_checkpoint):
    path, hf_model = qwen3_checkpoint
    limit = hf_model.config.max_position_embeddings
    with pytest.raises(ValueError, match=rf"max_model_len={limit + 1} is more than .*\({limit}.*hf_overrides"):
        LLM(path, device="cpu", dtype="float32", max_model_len=limit + 1)
    with pytest.raises(ValueError, match="max_model_len=97 is more than .*hf_overrides"):
        LLM(path, device="cpu", dtype="float32", max_model_len=97, hf_overrides={"max_position_embeddings": 96})


def test_yarn_context_matches_transformers(qwen3_checkpoint):
    path, _ = qwen3_checkpoint
    llm = LLM(path, device="cpu", dtype="float32", hf_overrides=YARN, max_num_batched_tokens=64)
    assert llm.engine.max_model_len == 192                      # original 96 x factor 2, the default
    config = apply_hf_overrides(transformers.AutoConfig.from_pretrained(path), YARN)
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(path, config=config).eval()
    gen = torch.Generator().manual_seed(4)
    batch = [torch.randint(3, config.vocab_size, (n,), generator=gen).tolist() for n in (150, 90)]
    params = SamplingParams(temperature=0, max_tokens=32, ignore_eos=True)
    got = [o.outputs[0].token_ids for o in llm.generate(batch, params, use_tqdm=False)]
    assert got == [hf_greedy(hf_model, p) for p in batch]         # positions up to 181, past the original 96
    past = llm.generate([batch[0]], SamplingParams(max_tokens=50), use_tqdm=False)[0].outputs[0]
    assert (len(past.token_ids), past.finish_reason) == (192 - 150, "length")     # stops at max_model_len


@pytest.mark.parametrize("field,value,rule", [("hf_overrides", [1], "hf_overrides must be a dict"),
                                              ("tensor_parallel_size", 2, "must be 1: this engine runs a model on one")])
def test_vllm_engine_args_are_checked_at_construction(field, value, rule):
    with pytest.raises(ValueError, match=rule):
        LLM("preset:tiny-qwen3", **{field: value})


def test_auto_max_model_len_is_what_the_kv_cache_holds(qwen3_checkpoint):
    """max_model_len -1 (vLLM's "auto"): the model's length, lowered to the KV cache's where that is less."""
    path, hf_model = qwen3_checkpoint
    small = LLM(path, device="cpu", dtype="float32", max_model_len=-1, num_kv_blocks=20, block_size=16)
    assert small.engine.max_model_len == 20 * 16
    params = SamplingParams(temperature=0, max_tokens=30, ignore_eos=True)
    assert len(small.generate([[5] * 290], params, use_tqdm=False)[0].outputs[0].token_ids) == 30
    past = small.generate([[5] * 300], params, use_tqdm=False)[0].outputs[0]   # all of the KV cache, no more
    assert (len(past.token_ids), past.finish_reason) == (20, "length")
    with pytest.raises(ValueError, match="leaves no room to generate within max_model_len=320"):
        small.generate([[5] * 320], params, use_tqdm=False)
    roomy = LLM(path, device="cpu", dtype="float32", max_model_len=-1, num_kv_blocks=1000, block_size=16)
    assert roomy.engine.max_model_len == hf_model.config.max_position_embeddings
    with pytest.raises(ValueError, match="max_model_len must be positive, or -1"):
        LLM(path, max_model_len=-2)
