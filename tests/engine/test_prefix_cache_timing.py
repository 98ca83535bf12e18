"""When the prefix cache may serve a block, end to end on the CPU: once the step that computes its last
token has run (the scheduler registers it when it takes that step's output), or at once for a newly
admitted request's prefill chunk (its step stores all K/V before attending: n > 1 siblings share the
prompt). Caching still works across requests (a finished request's blocks, its last step's included), no
decode-only step reads a block that it writes, and a step taken back before it ran (priority preemption)
leaves nothing to serve."""
import pytest

from engine import LLM, SamplingParams
from engine.llm_engine import LLMEngine
from tests.engine.test_generate_parity import prompts

BS = 4


def greedy(max_tokens):
    return SamplingParams(temperature=0, max_tokens=max_tokens, ignore_eos=True)


def make(path, prefix_caching, **kw):
    return LLM(path, device="cpu", dtype="float32", block_size=BS, enable_prefix_caching=prefix_caching,
               **{"max_model_len": 64, **kw})


def watch_steps(engine: LLMEngine) -> list:
    """Check every launched decode-only step (whose Triton kernel stores K/V in the launch that reads the
    cache): the cache slots a request reads (below its num_computed_tokens) are none that the step itself
    writes. Other steps store all K/V before any attention reads. Returns the launched steps' outputs."""
    launch, launched = engine.runner.launch, []

    def checked(out, **kw):
        launched.append(out)
        if not out.is_decode_only:
            return launch(out, **kw)
        written = {(x.block_ids[p // BS], p % BS)
                   for x in out.scheduled for p in range(x.num_computed_tokens, x.seq_len)}
        for x in out.scheduled:
            read = {(x.block_ids[p // BS], p % BS) for p in range(x.num_computed_tokens)}
            assert not read & written, f"{x.request.request_id} reads slots this step writes: {read & written}"
        return launch(out, **kw)

    engine.runner.launch = checked
    return launched


def run(engine: LLMEngine, finished: dict) -> None:
    while engine.has_unfinished_requests():
        finished.update({o.request_id: o for o in engine.step() if o.finished})


@pytest.mark.parametrize("async_scheduling", [False, True])
def test_a_finished_request_serves_later_ones_and_the_output_stays(qwen3_checkpoint, async_scheduling):
    """The first request computes 21 prompt + 7 output tokens: 7 full blocks, the last one filled by the
    step it finishes in. The same prompt again reads 5 blocks (one token left to compute); its
    continuation reads all 7; outputs equal an engine without prefix caching."""
    path, hf_model = qwen3_checkpoint
    prompt = prompts(hf_model.config.vocab_size, (21,), seed=11)[0]
    llm, plain = make(path, True, async_scheduling=async_scheduling), make(path, False)
    watch_steps(llm.engine)
    first = llm.generate([prompt], greedy(8), use_tqdm=False)[0]
    again = llm.generate([prompt], greedy(8), use_tqdm=False)[0]
    longer = prompt + list(first.outputs[0].token_ids[:7]) + [5]
    continued = llm.generate([longer], greedy(4), use_tqdm=False)[0]
    assert (first.num_cached_tokens, again.num_cached_tokens, continued.num_cached_tokens) == (0, 20, 28)
    want = plain.generate([prompt, longer], [greedy(8), greedy(4)], use_tqdm=False)
    assert [o.outputs[0].token_ids for o in (first, again, continued)] == [
        want[0].outputs[0].token_ids, want[0].outputs[0].token_ids, want[1].outputs[0].token_ids]
    assert llm.engine.get_stats().prefix_cache_hits == 48


def test_a_request_admitted_beside_the_decode_that_fills_a_block_computes_it(qwen3_checkpoint):
    """w's second step computes the last token of its first block; r (w's 4 tokens + 1) is admitted in
    that very step and computes the block itself (no step reads what it writes); a request with the
    same prompt admitted later reads it from the cache. Outputs equal an engine without caching."""
    path, _ = qwen3_checkpoint
    engine = make(path, True, async_scheduling=False).engine
    launched = watch_steps(engine)
    finished = {}
    engine.add_request("w", [11, 12, 13], greedy(6))
    engine.step()
    r_prompt = [11, 12, 13, engine.scheduler.running[0].output_token_ids[0], 5]
    engine.add_request("r", r_prompt, greedy(6))
    engine.step()
    assert [(x.request.request_id, x.num_computed_tokens) for x in launched[-1].scheduled] == [("w", 3), ("r", 0)]
    engine.add_request("later", r_prompt, greedy(6))
    run(engine, finished)
    assert (finished["r"].num_cached_tokens, finished["later"].num_cached_tokens) == (0, BS)
    want = make(path, False).generate([r_prompt], greedy(6), use_tqdm=False)[0].outputs[0].token_ids
    assert finished["r"].outputs[0].token_ids == finished["later"].outputs[0].token_ids == want


def test_a_priority_victim_taken_back_leaves_no_prefix_to_serve(qwen3_checkpoint):
    """Priority, 5 blocks of 4: j's decode would compute the last token of its first block, then j is
    preempted after its turn and taken back out of the step, which runs nothing else. k (j's first 4
    tokens + 1) must not read that block: its output equals a fresh engine's without caching."""
    path, _ = qwen3_checkpoint
    kw = dict(num_kv_blocks=5, max_model_len=20, max_num_batched_tokens=12, async_scheduling=False)
    engine = make(path, True, scheduling_policy="priority", **kw).engine
    watch_steps(engine)
    finished = {}
    engine.add_request("j", [11, 12], greedy(10), priority=9)
    engine.step()
    engine.add_request("x", [21, 22, 23, 24, 25, 26, 27, 28], greedy(10), priority=0)
    engine.add_request("i", list(range(40, 59)), greedy(1), priority=1)
    engine.step()
    engine.step()                      # j (position 3), then x; i's chunk preempts j (taken back) and itself
    assert engine.get_stats().num_preemptions == 2
    j = next(r for r in engine.scheduler.waiting if r.request_id == "j")
    k_prompt = j.all_token_ids[:BS] + [99]
    engine.add_request("k", k_prompt, greedy(8), priority=-1)
    run(engine, finished)
    assert finished["k"].num_cached_tokens == 0
    want = make(path, False, **kw).generate([k_prompt], greedy(8), use_tqdm=False)[0].outputs[0].token_ids
    assert finished["k"].outputs[0].token_ids == want


def test_n_siblings_share_the_prompt_in_their_first_step(qwen3_checkpoint):
    """n = 3: the first sequence computes the prompt, the other two read its full blocks in that same
    step (a prefill step: its K/V are stored before attention), as vLLM's children share it; the tokens
    equal an engine without prefix caching."""
    path, hf_model = qwen3_checkpoint
    prompt = prompts(hf_model.config.vocab_size, (21,), seed=5)[0]
    params = SamplingParams(temperature=1.0, seed=3, n=3, max_tokens=5, ignore_eos=True)
    llm, plain = make(path, True), make(path, False)
    launched = watch_steps(llm.engine)
    got = llm.generate([prompt], params, use_tqdm=False)[0]
    first = launched[0].scheduled
    assert [(x.num_computed_tokens, x.num_new_tokens) for x in first] == [(0, 21), (20, 1), (20, 1)]
    want = plain.generate([prompt], params, use_tqdm=False)[0]
    assert [c.token_ids for c in got.outputs] == [c.token_ids for c in want.outputs]
