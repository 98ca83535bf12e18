"""Overlapped (async) scheduling must not change what is generated: compare with the synchronous
engine on a mix of seeded sampling, stop strings, penalties, min_tokens, n > 1 and preemption."""
import random

from engine import LLM, SamplingParams


def workload(vocab: int, penalties: bool):
    """Ten requests; with penalties, two of them make the engine drain before each step."""
    rng = random.Random(7)
    prompts = [[rng.randrange(3, vocab) for _ in range(rng.randint(3, 60))] for _ in range(10)]
    params = [SamplingParams(temperature=0, max_tokens=20, ignore_eos=True),
              SamplingParams(temperature=0.8, seed=1, max_tokens=17, ignore_eos=True),
              SamplingParams(temperature=1.0, seed=2, max_tokens=9, frequency_penalty=0.5 if penalties else 0,
                             ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=30, stop=["a"], ignore_eos=True),
              SamplingParams(temperature=0.7, seed=3, n=2, max_tokens=12, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=15, min_tokens=5),
              SamplingParams(temperature=0.9, seed=4, top_k=20, top_p=0.9, max_tokens=25, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=1, ignore_eos=True),
              SamplingParams(temperature=0, max_tokens=40, repetition_penalty=1.3 if penalties else 1,
                             ignore_eos=True),
              SamplingParams(temperature=0.5, seed=5, max_tokens=22, logprobs=2, ignore_eos=True)]
    return prompts, params


def run(path: str, async_scheduling: bool, penalties: bool = False, **kw):
    llm = LLM(path, device="cpu", dtype="float32", async_scheduling=async_scheduling, **kw)
    prompts, params = workload(llm.engine.model_config.vocab_size, penalties)
    outs = llm.generate(prompts, params, use_tqdm=False)
    assert not llm.engine.has_unfinished_requests()
    assert llm.engine.block_manager.num_free_blocks == llm.engine.block_manager.num_blocks
    return [[(c.token_ids, c.text, c.finish_reason, c.logprobs) for c in o.outputs] for o in outs], llm


def test_async_equals_sync(qwen3_checkpoint):
    sync, _ = run(qwen3_checkpoint[0], False)
    overlapped, _ = run(qwen3_checkpoint[0], True)
    assert overlapped == sync


def test_async_equals_sync_under_preemption_and_chunking(qwen3_checkpoint):
    kw = dict(block_size=8, num_kv_blocks=20, max_model_len=128, max_num_batched_tokens=24,
              enable_prefix_caching=False)
    sync, _ = run(qwen3_checkpoint[0], False, **kw)
    overlapped, llm = run(qwen3_checkpoint[0], True, **kw)
    assert llm.engine.get_stats().num_preemptions > 0
    assert overlapped == sync


def test_penalties_drain_the_overlap(qwen3_checkpoint):
    sync, _ = run(qwen3_checkpoint[0], False, penalties=True)
    overlapped, _ = run(qwen3_checkpoint[0], True, penalties=True)
    assert overlapped == sync


def test_a_drained_engine_frees_every_block_table_row(qwen3_checkpoint):
    """The last step's finished requests give back their rows although the engine then idles (a
    penalty made it drain before scheduling nothing): more rounds than max_num_seqs has rows."""
    llm = LLM(qwen3_checkpoint[0], device="cpu", dtype="float32", max_num_seqs=4, async_scheduling=True)
    params = SamplingParams(temperature=0, max_tokens=3, frequency_penalty=0.5, ignore_eos=True)
    for round_ in range(4):
        outs = llm.generate([[5, 6, 7]] * 3, params, use_tqdm=False)
        assert [len(o.outputs[0].token_ids) for o in outs] == [3] * 3, round_
    assert len(llm.engine.runner.inputs.rows) == 3     # only the last round's, freed by the next step
