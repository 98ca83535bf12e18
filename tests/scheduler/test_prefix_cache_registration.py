"""Blocks enter the prefix index once the step that computes their last token has run (the scheduler's
update_from_output), or, for a newly admitted request's prefill chunk, when its step is scheduled (that
step stores all K/V before any attention, so requests admitted after it, n > 1 siblings, may share them;
admissions are never taken back). A running request's step taken back before it runs leaves no hash
behind, and no request reads a block that a decode-only step writes in that same step.

A simulated KV cache (`Shadow`) records the slots each step writes, and checks that every position a
step reads from the cache (below its num_computed_tokens) was written by an earlier step.
"""
import dataclasses

from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from kv_cache.block_manager import BlockManager
from scheduler.scheduler import Scheduler, SchedulerConfig

BS = 4


class Shadow:
    """The runner's view: the slots (block, offset) written by steps that ran."""

    def __init__(self, s: Scheduler) -> None:
        self.s, self.written = s, set()

    def launch(self, out):
        """Run `out`: every cached position its requests read must be written by an earlier step."""
        for x in out.scheduled:
            for p in range(x.num_computed_tokens):
                slot = (x.block_ids[p // BS], p % BS)
                assert slot in self.written, \
                    f"{x.request.request_id} reads position {p} (block {slot[0]}), never written"
        for x in out.scheduled:
            self.written.update((x.block_ids[p // BS], p % BS) for p in range(x.num_computed_tokens, x.seq_len))
            x.request.num_inflight += x.samples          # as LLMEngine.step: its token is on its way

    def step(self, token=7):
        """schedule, run, update (sync scheduling)."""
        out = self.s.schedule()
        self.launch(out)
        self.s.update_from_output(out, [token if x.samples else None for x in out.scheduled])
        return out


def make(policy="fcfs", num_blocks=16, budget=64, max_num_seqs=8):
    bm = BlockManager(num_blocks, BS)
    s = Scheduler(SchedulerConfig(max_num_seqs, budget, 256, policy=policy), bm)
    return s, bm, Shadow(s)


def req(rid, tokens, priority=0, max_tokens=50):
    return Request(rid, list(tokens), SamplingParams(max_tokens=max_tokens), priority=priority)


def test_priority_victim_taken_back_leaves_no_hash_on_its_uncomputed_block():
    """Priority: j's decode would fill its second block, then j is the victim of a later running
    request and taken back out of the step, which runs nothing. The block never got its last token's
    K/V: a request with j's first 8 tokens as its prefix gets j's first block only."""
    s, bm, shadow = make("priority", num_blocks=5, budget=12)
    j = req("j", [1, 2, 3, 4, 5, 6], priority=9)
    s.add_request(j)
    shadow.step()                                        # j's prompt: block 0 full and computed
    i = req("i", range(100, 130), priority=0)
    s.add_request(i)
    shadow.step()                                        # j's decode (position 6) and i's first chunk
    out = shadow.step()                                  # j (position 7) scheduled, then taken back; i preempts itself
    assert out.scheduled == [] and out.preempted_request_ids == ["j", "i"]
    assert j.status is RequestStatus.PREEMPTED and bm.get_block_ids("j") == []
    k = req("k", j.all_token_ids[:8] + [9], priority=-1)
    s.add_request(k)
    out = shadow.step()                                  # Shadow: k reads only written slots
    assert out.scheduled[0].request is k
    assert k.num_cached_tokens == BS and out.scheduled[0].num_computed_tokens == BS


def test_a_block_completed_by_a_decode_is_no_hit_in_that_step_but_in_a_later_one():
    """w's decode computes the last token of its first block; r, admitted in that same step with w's
    sequence as its prefix, computes the block itself (no hit on a block being written: the step is not
    decode-only). A request admitted after that step ran gets the block from the cache."""
    s, bm, shadow = make()
    w = req("w", [1, 2, 3], max_tokens=20)
    s.add_request(w)
    shadow.step()                                        # w: 4 tokens known, 3 computed
    r = req("r", w.all_token_ids + [5])
    s.add_request(r)
    out = shadow.step()
    assert [(x.request.request_id, x.num_computed_tokens, x.num_new_tokens) for x in out.scheduled] == [
        ("w", 3, 1), ("r", 0, 5)]
    assert r.num_cached_tokens == 0 and not out.is_decode_only
    later = req("later", r.prompt_token_ids)
    s.add_request(later)
    out = shadow.step()
    assert later.num_cached_tokens == BS
    assert out.scheduled[-1].block_ids[0] in (bm.get_block_ids("w")[0], bm.get_block_ids("r")[0])


def test_async_blocks_are_registered_when_the_step_output_is_taken():
    """Async scheduling: step 2 is scheduled while step 1 runs, and step 1's output is taken after
    that; the blocks step 1 completed are registered then, and a request admitted in step 3 reads them."""
    s, bm, shadow = make()
    a = req("a", range(2 * BS))
    s.add_request(a)
    out1 = s.schedule()
    shadow.launch(out1)
    s.add_request(req("b", list(range(2 * BS)) + [50]))
    out2 = s.schedule()                                  # a's next token is in flight
    shadow.launch(out2)
    s.update_from_output(out1, [7])
    assert bm.pool.num_cached_blocks >= 2
    c = req("c", list(range(2 * BS)) + [60])
    s.add_request(c)
    out3 = s.schedule()
    shadow.launch(out3)
    s.update_from_output(out2, [8, 8])
    assert c.num_cached_tokens == 2 * BS


def test_a_request_finished_right_after_its_step_leaves_its_blocks_cached():
    """The engine takes a step's output (registration) before it finishes the requests that stop there."""
    s, _, shadow = make()
    a = req("a", range(3 * BS), max_tokens=1)
    s.add_request(a)
    shadow.step()
    s.finish_request(a, RequestStatus.FINISHED_LENGTH)
    b = req("b", range(3 * BS))
    s.add_request(b)
    shadow.step()
    assert b.num_cached_tokens == 2 * BS                 # all but the last token's block (one to compute)


def test_no_registration_for_requests_preempted_or_finished_before_their_output():
    """A request preempted (its blocks freed, maybe re-admitted into others) or aborted between a step's
    scheduling and its output registers nothing more from that step when the output comes. (Their
    prompt blocks went into the index when the step was scheduled: a prefill chunk's step stores K/V
    before attending, and it was launched, so they hold what their hashes say.)"""
    s, bm, shadow = make()
    a, b = req("a", range(2 * BS + 1)), req("b", range(100, 100 + 2 * BS + 1))
    s.add_request(a)
    s.add_request(b)
    out = s.schedule()
    shadow.launch(out)
    assert bm.pool.num_cached_blocks == 4                # both prompts' full blocks, at scheduling
    s._preempt(a)
    s.finish_request(b, RequestStatus.FINISHED_ABORTED)
    bm.reset_prefix_cache()                              # a comes back into fresh blocks, no hits,
    s.config = dataclasses.replace(s.config, max_num_batched_tokens=BS - 1)   # not one full block this step
    readmitted = s.schedule()
    assert [(x.request, x.is_new, x.num_new_tokens) for x in readmitted.scheduled] == [(a, True, BS - 1)]
    before = bm.pool.num_cached_blocks
    s.update_from_output(out, [7, 7])
    assert bm.pool.num_cached_blocks == before
