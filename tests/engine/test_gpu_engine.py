"""On the GPU: CUDA graphs give the same greedy output as eager, and every attention backend gives the
same greedy tokens as torch_ref (or the first divergence is a bf16 near-tie in torch_ref's own logits).
These need CUDA; on the CPU they are skipped (the CPU side of graphs is in test_graph_padding.py)."""
import random

import pytest
import torch
import transformers

from engine import LLM, SamplingParams
from models.tokenizer import byte_tokenizer
from tests.engine.checkpoints import randomize

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
NUM_NEW = 16
NEAR_TIE = 0.05     # logprob gap between the top two tokens that bf16 rounding can flip


@pytest.fixture(scope="module")
def bf16_checkpoint(tmp_path_factory):
    """A small random Qwen3 with head dim 64 (flash-attn's wheel supports 64 and 128), in bf16."""
    config = transformers.Qwen3Config(
        architectures=["Qwen3ForCausalLM"], hidden_size=256, intermediate_size=512, num_hidden_layers=2,
        num_attention_heads=8, num_key_value_heads=2, head_dim=64, vocab_size=1024,
        max_position_embeddings=2048, tie_word_embeddings=True, dtype="bfloat16")
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.bfloat16)
    randomize(model, seed=3)
    path = tmp_path_factory.mktemp("gpu-qwen3")
    model.save_pretrained(path)
    byte_tokenizer().save_pretrained(path)
    return str(path)


def batch(seed=0):
    rng = random.Random(seed)
    return [[rng.randrange(3, 1000) for _ in range(n)] for n in (3, 40, 300, 700, 17, 1)]


def greedy(llm: LLM, logprobs=None):
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True, logprobs=logprobs)
    return [o.outputs[0] for o in llm.generate(batch(), params, use_tqdm=False)]


def make_llm(path, backend, **kw):
    """A small engine; KV blocks fixed so several engines fit side by side in one test process."""
    block_size = 256 if backend in ("flash_attn", "torch_ref") else 16
    return LLM(path, attention_backend=backend, block_size=block_size,
               **{"num_kv_blocks": 16 * 256 // block_size * 8, **kw})


def test_graphs_equal_eager(bf16_checkpoint):
    # float32 (triton serves it): bf16 logits of a random model tie exactly too often to compare
    eager = greedy(make_llm(bf16_checkpoint, "triton", enforce_eager=True, max_num_seqs=16, dtype="float32"))
    llm = make_llm(bf16_checkpoint, "triton", max_num_seqs=16, dtype="float32")
    assert llm.engine.runner.graphs is not None
    graphs = greedy(llm)
    assert [c.token_ids for c in graphs] == [c.token_ids for c in eager]


def test_one_request_prefill_graphs_equal_eager(bf16_checkpoint):
    """Prompts sent one at a time: each prefill step is a lone request, replayed from a prefill graph
    padded to 16-512 tokens (the 700-token prompt runs eagerly; the repeated 300-token one prefills
    its last tokens over its cached prefix), with the same greedy tokens as eager."""
    kw = dict(max_num_seqs=16, dtype="float32")
    eager = make_llm(bf16_checkpoint, "triton", enforce_eager=True, **kw)
    llm = make_llm(bf16_checkpoint, "triton", **kw)
    graphs = llm.engine.runner.graphs
    assert graphs.prefill_sizes == [16, 32, 64, 128, 256, 512]
    replayed = []
    run = graphs.run
    graphs.run = lambda ids, pos, common: replayed.append((common.num_reqs, common.num_tokens)) or run(ids, pos, common)
    params = SamplingParams(temperature=0, max_tokens=NUM_NEW, ignore_eos=True)
    prompts = batch()
    for prompt in prompts + [prompts[2]]:
        want = eager.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
        got = llm.generate([prompt], params, use_tqdm=False)[0].outputs[0].token_ids
        assert got == want, f"prompt of {len(prompt)} tokens"
    prefills = [shape for shape in replayed if shape[1] > 1 and shape[0] == 1]
    assert prefills == [(1, 16), (1, 64), (1, 512), (1, 32), (1, 16)], prefills


def test_mixed_step_graphs_equal_eager(bf16_checkpoint):
    """A 64-token step budget chunks the batch's prompts, so most steps mix a prompt's chunk with the
    other requests' decodes; replayed from prefill graphs (requests and tokens padded) they give the
    eager engine's greedy tokens."""
    kw = dict(max_num_seqs=16, dtype="float32", max_num_batched_tokens=64)
    eager = greedy(make_llm(bf16_checkpoint, "triton", enforce_eager=True, **kw))
    llm = make_llm(bf16_checkpoint, "triton", **kw)
    graphs = llm.engine.runner.graphs
    assert graphs.prefill_sizes == [16, 32, 64]
    replayed = []
    run = graphs.run
    graphs.run = lambda ids, pos, common: replayed.append((common.num_reqs, common.num_tokens)) or run(ids, pos, common)
    got = greedy(llm)
    assert [c.token_ids for c in got] == [c.token_ids for c in eager]
    mixed = [shape for shape in replayed if shape[1] > shape[0] > 1]
    assert len(mixed) >= 10, replayed


def test_prompt_logprobs_with_graphs_equal_eager(bf16_checkpoint):
    """Prompt logprobs read the hidden states of graph replays too (steps with prefill tokens padded
    to 16-64 tokens under a 64-token budget, so prompts are chunked, async scheduling on): the eager
    engine's, within float32 noise."""
    kw = dict(max_num_seqs=16, dtype="float32", max_num_batched_tokens=64)
    params = SamplingParams(temperature=0, max_tokens=4, ignore_eos=True, prompt_logprobs=3)
    eager = make_llm(bf16_checkpoint, "triton", enforce_eager=True, **kw).generate(batch(), params, use_tqdm=False)
    llm = make_llm(bf16_checkpoint, "triton", **kw)
    assert llm.engine.runner.graphs.prefill_sizes == [16, 32, 64]
    got = llm.generate(batch(), params, use_tqdm=False)
    for want, have in zip(eager, got):
        assert len(have.prompt_logprobs) == len(have.prompt_token_ids) and have.prompt_logprobs[0] is None
        for token, a, b in zip(have.prompt_token_ids[1:], want.prompt_logprobs[1:], have.prompt_logprobs[1:]):
            assert next(iter(b)) == token and b[token].logprob == pytest.approx(a[token].logprob, abs=1e-3)
            assert max(lp.logprob for lp in b.values()) == pytest.approx(max(lp.logprob for lp in a.values()),
                                                                         abs=1e-3)


def test_constrained_requests_with_graphs_equal_eager(bf16_checkpoint):
    """Requests whose sampling reads their last token (bad_words, a structured choice, penalties) make
    the engine drain between steps; beside plain seeded ones, in rounds that idle in between (more rounds
    than block-table rows), graphs give the eager engine's answers (float32), and the answers keep their
    rules."""
    choices = ["yes", "no way"]
    base = dict(max_tokens=12, temperature=1.0)
    params = [SamplingParams(seed=1, bad_words=["a", "bc"], ignore_eos=True, **base),
              SamplingParams(seed=2, structured_outputs={"choice": choices}, **base),
              SamplingParams(seed=3, repetition_penalty=1.4, ignore_eos=True, **base),
              SamplingParams(seed=4, ignore_eos=True, **base)]
    kw = dict(max_num_seqs=8, dtype="float32")
    runs = []
    for eager in (True, False):
        llm = make_llm(bf16_checkpoint, "triton", enforce_eager=eager, **kw)
        runs.append([[o.outputs[0] for o in llm.generate(batch(r)[:4], params, use_tqdm=False)] for r in range(4)])
    for eager, graphs in zip(*runs):
        assert [o.token_ids for o in graphs] == [o.token_ids for o in eager]
        assert "a" not in graphs[0].text and "bc" not in graphs[0].text
        assert graphs[1].text in choices or graphs[1].finish_reason == "length"


@pytest.mark.parametrize("backend", ["triton", "flash_attn"])
def test_backend_greedy_matches_torch_ref(bf16_checkpoint, backend):
    if backend == "flash_attn":
        pytest.importorskip("flash_attn")
    ref = greedy(make_llm(bf16_checkpoint, "torch_ref", enforce_eager=True), logprobs=2)
    got = greedy(make_llm(bf16_checkpoint, backend))
    for r, g in zip(ref, got):
        for k, (want, have) in enumerate(zip(r.token_ids, g.token_ids)):
            if want != have:
                top = sorted((lp.logprob for lp in r.logprobs[k].values()), reverse=True)
                gap = top[0] - top[1]
                assert gap < NEAR_TIE, f"{backend} diverged at token {k} where torch_ref's top-2 gap is {gap:.3f}"
                break


def test_fp8_kv_cache_skips_flash_attn_and_matches_torch_ref(bf16_checkpoint):
    """kv_cache_dtype="fp8": the automatic choice is triton (flash-attn 2 has no fp8 KV cache), its
    caches are fp8, CUDA graphs are used, and its greedy tokens equal torch_ref's on the same fp8
    cache (or diverge first at a bf16 near-tie of torch_ref's logits)."""
    llm = LLM(bf16_checkpoint, kv_cache_dtype="fp8", num_kv_blocks=16 * 8, max_num_seqs=16)
    runner = llm.engine.runner
    assert llm.engine.attention_backend == "triton"
    assert all(cache.dtype == torch.float8_e4m3fn for cache in runner.kv_caches)
    assert runner.graphs is not None
    ref = greedy(make_llm(bf16_checkpoint, "torch_ref", enforce_eager=True, kv_cache_dtype="fp8"), logprobs=2)
    got = greedy(llm)
    for r, g in zip(ref, got):
        for k, (want, have) in enumerate(zip(r.token_ids, g.token_ids)):
            if want != have:
                top = sorted((lp.logprob for lp in r.logprobs[k].values()), reverse=True)
                assert top[0] - top[1] < NEAR_TIE, f"diverged at token {k} where torch_ref's top-2 gap is big"
                break
    with pytest.raises(ValueError, match="Backends that can: triton, torch_ref"):
        make_llm(bf16_checkpoint, "flash_attn", kv_cache_dtype="fp8")


def test_yarn_context_matches_transformers(bf16_checkpoint):
    """A yarn rope from hf_overrides (context 256 -> 1024) through the fused rope kernels and graphs:
    greedy tokens equal transformers' on the same config, prompts of up to 700 tokens, float32."""
    overrides = {"max_position_embeddings": 256,
                 "rope_parameters": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 256}}
    llm = make_llm(bf16_checkpoint, "triton", max_num_seqs=16, dtype="float32", hf_overrides=overrides)
    assert llm.engine.max_model_len == 1024
    config = transformers.AutoConfig.from_pretrained(bf16_checkpoint)
    config.max_position_embeddings = 256
    config.rope_parameters = {**config.rope_parameters, **overrides["rope_parameters"]}
    hf_model = transformers.AutoModelForCausalLM.from_pretrained(bf16_checkpoint, config=config,
                                                                 dtype=torch.float32).cuda().eval()
    for prompt, out in zip(batch(), greedy(llm)):
        ids = torch.tensor([prompt], device="cuda")
        ref = hf_model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=NUM_NEW, do_sample=False,
                                eos_token_id=None, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
        for k, want in enumerate(ref.sequences[0, len(prompt):].tolist()):
            if out.token_ids[k] != want:        # only at a near-tie of transformers' own logits (tf32 dots)
                top = ref.scores[k][0].float().log_softmax(-1).topk(2).values
                assert top[0] - top[1] < NEAR_TIE, f"prompt of {len(prompt)} tokens diverged at token {k}"
                break


def test_auto_max_model_len_with_graphs_equals_eager(bf16_checkpoint):
    """max_model_len -1 with a KV cache of 1,024 tokens (the model's positions cover 2,048): the
    attention builder and its graph buffers are made again for 1,024; greedy tokens equal eager's."""
    kw = dict(max_num_seqs=16, dtype="float32", max_model_len=-1, num_kv_blocks=64)
    llm = make_llm(bf16_checkpoint, "triton", **kw)
    assert llm.engine.max_model_len == 64 * 16 and llm.engine.runner.graphs is not None
    eager = greedy(make_llm(bf16_checkpoint, "triton", enforce_eager=True, **kw))
    assert [c.token_ids for c in greedy(llm)] == [c.token_ids for c in eager]
