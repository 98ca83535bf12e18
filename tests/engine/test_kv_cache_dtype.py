"""End to end on the CPU (torch_ref) with an fp8 KV cache: the cache is float8_e4m3fn, holds four
times the blocks of a float32 one in the same memory, and generation stays close to the float32
cache's.

"Close" here, on a tiny random Qwen3 in float32: the first step's logits (every prompt prefilled,
read back from the fp8 cache) are within 15% relative L2 of the float32 cache's (measured: 3-7%;
e4m3 rounds K/V by up to 6%), yet not equal to them (the cast really happened), and every prompt's
first greedy token is the same. Later tokens may diverge where the random model's top two logits
are near-ties, so they are not compared.
"""
import torch

from engine import LLM, SamplingParams
from engine.config import ModelConfig
from engine.kv_sizing import bytes_per_block
from tests.engine.test_generate_parity import prompts, record_logits

NUM_NEW = 16


def run(path: str, kv_cache_dtype: str, gib: float):
    llm = LLM(path, device="cpu", dtype="float32", max_model_len=256, cpu_kv_cache_gib=gib,
              kv_cache_dtype=kv_cache_dtype)
    seen = record_logits(llm)
    batch = prompts(llm.engine.model_config.vocab_size, lens=(5, 17, 33, 50, 90))
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True)
    outs = [o.outputs[0] for o in llm.generate(batch, params, use_tqdm=False)]
    return llm, outs, seen[0]


def test_fp8_kv_cache_generates_close_to_float32(qwen3_checkpoint):
    path, hf_model = qwen3_checkpoint
    block_bytes = bytes_per_block(ModelConfig.from_hf_config(hf_model.config), 16, torch.float32)
    gib = 64 * block_bytes / 2**30           # 64 float32 blocks
    ref_llm, ref_outs, ref_logits = run(path, "auto", gib)
    llm, outs, logits = run(path, "fp8", gib)

    runner = llm.engine.runner
    assert llm.engine.attention_backend == "torch_ref"
    assert all(cache.dtype == torch.float8_e4m3fn for cache in runner.kv_caches)
    assert ref_llm.engine.runner.kv_caches[0].dtype == torch.float32
    assert ref_llm.engine.runner.num_blocks == 64 and runner.num_blocks == 4 * 64

    assert all(len(o.token_ids) == NUM_NEW and o.finish_reason == "length" for o in outs)
    assert logits.shape == ref_logits.shape == (5, hf_model.config.vocab_size)
    rel = (logits - ref_logits).norm(dim=-1) / ref_logits.norm(dim=-1)
    assert (rel < 0.15).all(), f"first-step logits differ by {rel.tolist()}"
    assert (rel > 1e-3).all(), "logits equal the float32 cache's: the KV cache was not fp8"
    assert [o.token_ids[0] for o in outs] == [o.token_ids[0] for o in ref_outs]
