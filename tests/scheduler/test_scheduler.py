"""Scheduler decisions: budgets, chunked prefill, admission order, preemption, prefix hits."""
import pytest

from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from kv_cache.block_manager import BlockManager
from scheduler.scheduler import Scheduler, SchedulerConfig

BS = 4


def make(num_blocks=64, max_num_seqs=8, budget=64, chunked=True, prefix=True, max_model_len=256):
    bm = BlockManager(num_blocks, BS, enable_prefix_caching=prefix)
    return Scheduler(SchedulerConfig(max_num_seqs, budget, max_model_len, chunked), bm), bm


def req(rid, n, start=0, max_tokens=100):
    return Request(rid, list(range(start, start + n)), SamplingParams(max_tokens=max_tokens))


def run_step(s, token=7):
    out = s.schedule()
    sampled = [token if x.samples else None for x in out.scheduled]
    s.update_from_output(out, sampled)
    return out


def test_prefill_then_decode_and_mixed_batch():
    s, _ = make(budget=64)
    a = req("a", 10)
    s.add_request(a)
    out = run_step(s)
    assert [(x.request.request_id, x.num_new_tokens, x.is_new) for x in out.scheduled] == [("a", 10, True)]
    assert a.output_token_ids == [7] and a.num_computed_tokens == 10
    b = req("b", 20, start=100)
    s.add_request(b)
    out = run_step(s)
    # running decode first (1 token), then the new prefill, in one step
    assert [(x.request.request_id, x.num_new_tokens) for x in out.scheduled] == [("a", 1), ("b", 20)]
    assert out.scheduled[0].num_computed_tokens == 10 and not out.scheduled[0].is_new


def test_chunked_prefill_samples_only_at_the_end():
    s, _ = make(budget=8)
    a = req("a", 20)
    s.add_request(a)
    chunks = []
    while not a.output_token_ids:
        out = run_step(s)
        chunks.append([(x.num_computed_tokens, x.num_new_tokens, x.samples) for x in out.scheduled])
    assert chunks == [[(0, 8, False)], [(8, 8, False)], [(16, 4, True)]]


def test_without_chunking_a_prompt_over_budget_waits():
    bm = BlockManager(64, BS)
    with pytest.raises(ValueError, match="max_num_batched_tokens"):
        SchedulerConfig(4, 8, 256, enable_chunked_prefill=False)
    s = Scheduler(SchedulerConfig(4, 32, 32, enable_chunked_prefill=False), bm)
    s.add_request(req("a", 20))
    s.add_request(req("b", 20, start=50))
    out = s.schedule()
    assert [x.request.request_id for x in out.scheduled] == ["a"]      # b does not fit in the rest


def test_max_num_seqs_and_token_budget():
    s, _ = make(max_num_seqs=2, budget=1000)
    for i in range(4):
        s.add_request(req(str(i), 5, start=10 * i))
    out = s.schedule()
    assert [x.request.request_id for x in out.scheduled] == ["0", "1"]
    assert len(s.waiting) == 2


def test_preemption_frees_newest_and_resumes_first():
    # 6 blocks of 4 tokens: a and b take 2 blocks each for 8-token prompts; growth forces preemption.
    s, bm = make(num_blocks=6, budget=100, prefix=False)
    a, b = req("a", 8), req("b", 8, start=50)
    s.add_request(a)
    s.add_request(b)
    run_step(s)
    assert bm.num_free_blocks == 2
    run_step(s)                            # both decode: each needs a third block -> 0 free
    assert bm.num_free_blocks == 0
    for _ in range(3):
        run_step(s)                        # fill the third blocks (tokens 10..12)
    out = run_step(s)                      # a needs a 4th block: b (newest) is preempted
    assert out.preempted_request_ids == ["b"]
    assert b.status is RequestStatus.PREEMPTED and b.num_computed_tokens == 0
    assert s.waiting[0] is b and s.num_preemptions == 1
    assert bm.get_block_ids("b") == []
    kept = list(b.output_token_ids)
    s.finish_request(a, RequestStatus.FINISHED_STOPPED)
    out = run_step(s)
    resumed = out.scheduled[0]
    assert resumed.request is b and resumed.is_new
    assert resumed.num_new_tokens == 8 + len(kept)          # prompt + outputs so far are recomputed
    assert b.output_token_ids[:len(kept)] == kept


def test_prefix_cache_hit_skips_computed_blocks():
    s, bm = make(budget=100)
    a = req("a", 10)
    s.add_request(a)
    run_step(s)
    b = Request("b", list(range(10)) + [99, 98], SamplingParams(max_tokens=5))
    s.add_request(b)
    out = run_step(s)
    sched_b = [x for x in out.scheduled if x.request is b][0]
    assert sched_b.num_computed_tokens == 8            # two full blocks of 4 shared with a
    assert sched_b.num_new_tokens == 4
    assert b.num_cached_tokens == 8
    assert bm.num_prefix_hits >= 8


def test_finish_frees_blocks_and_reports_id():
    s, bm = make()
    a = req("a", 10)
    s.add_request(a)
    run_step(s)
    total = bm.num_free_blocks
    s.finish_request(a, RequestStatus.FINISHED_ABORTED)
    assert bm.num_free_blocks > total and not s.has_unfinished()
    assert s.schedule().finished_request_ids == []        # an empty step is not launched: the id waits
    s.add_request(req("b", 10))
    assert s.schedule().finished_request_ids == ["a"]     # the next launched step frees a's block-table row


def test_is_decode_only_follows_the_step_and_no_request_runs_zero_tokens():
    s, _ = make(budget=64)
    a = req("a", 10)
    s.add_request(a)
    out = run_step(s)
    assert not out.is_decode_only                      # a's 10-token prefill
    out = run_step(s)
    assert out.is_decode_only and out.num_batched_tokens == 1
    s.add_request(req("b", 3, start=100))
    out = run_step(s)
    assert not out.is_decode_only                      # a's decode beside b's prefill
    with pytest.raises(AssertionError, match="scheduled with 0 tokens"):
        s._scheduled(a, 0, is_new=False)
