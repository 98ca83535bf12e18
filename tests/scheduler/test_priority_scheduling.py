"""The scheduling policies (vLLM's --scheduling-policy): "priority" admits by (priority, arrival_time),
requeues a preempted request at its place and preempts the running request with the largest
(priority, arrival_time); "fcfs" keeps arrival order and preempts the newest. The waiting queues
themselves and the priority checks."""
import pytest

from engine.request import Request, RequestStatus
from engine.sampling_params import SamplingParams
from kv_cache.block_manager import BlockManager
from scheduler.scheduler import Scheduler, SchedulerConfig
from scheduler.waiting_queue import (SCHEDULING_POLICIES, FCFSRequestQueue, PriorityRequestQueue,
                                     check_priority)
from tests.scheduler.test_scheduler import BS, run_step

NOT_ENABLED = "Got priority 1 but Priority scheduling is not enabled."


def make(policy, num_blocks=64, max_num_seqs=8, budget=64):
    bm = BlockManager(num_blocks, BS, enable_prefix_caching=False)
    return Scheduler(SchedulerConfig(max_num_seqs, budget, 256, policy=policy), bm), bm


def req(rid, n, priority=0, arrival=None, start=0):
    r = Request(rid, list(range(start, start + n)), SamplingParams(max_tokens=100), priority=priority)
    if arrival is not None:
        r.arrival_time = arrival
    return r


def ids(scheduled_or_requests):
    return [getattr(x, "request", x).request_id for x in scheduled_or_requests]


def test_priority_admits_lower_values_first_and_ties_by_arrival():
    s, _ = make("priority")
    for rid, priority, arrival in [("late-0", 0, 3.0), ("p2", 2, 0.0), ("early-0", 0, 1.0), ("p-1", -1, 5.0)]:
        s.add_request(req(rid, 3, priority, arrival))
    assert ids(s.waiting) == ["p-1", "early-0", "late-0", "p2"]
    assert ids(s.schedule().scheduled) == ["p-1", "early-0", "late-0", "p2"]


def test_fcfs_admits_in_arrival_order_whatever_the_priority():
    s, _ = make("fcfs")
    for rid, priority in [("a", 5), ("b", 0), ("c", 1)]:
        s.add_request(req(rid, 3, priority))
    assert ids(s.schedule().scheduled) == ["a", "b", "c"]


def test_a_more_urgent_arrival_goes_ahead_of_waiting_ones_but_preempts_no_running_one():
    s, _ = make("priority", max_num_seqs=1)
    a, b, c = req("a", 3, priority=5), req("b", 3, priority=3), req("c", 3, priority=1)
    s.add_request(a)
    run_step(s)
    s.add_request(b)
    s.add_request(c)                                   # arrives after b, more urgent
    out = run_step(s)
    assert ids(out.scheduled) == ["a"] and out.preempted_request_ids == []
    assert ids(s.waiting) == ["c", "b"]
    s.finish_request(a, RequestStatus.FINISHED_STOPPED)
    assert ids(run_step(s).scheduled) == ["c"]


def _blocks_run_out(policy, extra_waiting=()):
    """4 blocks of 4 tokens: a (priority 9, admitted first, 5 tokens) and b (priority 0, 8 tokens) fill
    them; next step a's decode fits its second block and b's needs a third: one must go."""
    s, bm = make(policy, num_blocks=4)
    a, b = req("a", 5, priority=9 if policy == "priority" else 0), req("b", 8, start=50)
    s.add_request(a)
    run_step(s)
    s.add_request(b)
    run_step(s)
    assert ids(s.running) == ["a", "b"] and bm.num_free_blocks == 0
    for r in extra_waiting:
        s.add_request(r)
    return s, a, b, run_step(s)


def test_priority_preempts_the_largest_priority_even_if_it_ran_earlier_in_the_step():
    s, a, b, out = _blocks_run_out("priority")
    assert out.preempted_request_ids == ["a"]
    assert ids(out.scheduled) == ["b"] and out.num_batched_tokens == 1   # a's turn taken back
    assert a.status is RequestStatus.PREEMPTED and a.num_computed_tokens == 0
    assert ids(s.running) == ["b"] and b.num_output_tokens == 2


def test_fcfs_preempts_the_newest_as_before():
    s, a, b, out = _blocks_run_out("fcfs", extra_waiting=[req("w", 3, start=90)])
    assert out.preempted_request_ids == ["b"]
    assert ids(out.scheduled) == ["a"]
    assert ids(s.waiting) == ["b", "w"]                # back to the front


def test_priority_requeues_the_preempted_request_at_its_place():
    urgent, lax = req("urgent", 3, priority=-1, start=90), req("lax", 3, priority=20, start=95)
    s, a, _, _ = _blocks_run_out("priority", extra_waiting=[lax, urgent])
    assert ids(s.waiting) == ["urgent", "a", "lax"]
    assert a.num_preemptions == 1 and s.num_preemptions == 1


def test_priority_victim_among_equals_is_the_latest_arrival():
    s, bm = make("priority", num_blocks=4)
    first, second = req("first", 8, priority=1, arrival=1.0), req("second", 8, priority=1, arrival=2.0, start=50)
    s.add_request(second)
    s.add_request(first)
    run_step(s)
    assert ids(s.running) == ["first", "second"] and bm.num_free_blocks == 0
    out = run_step(s)                                  # both need a third block
    assert out.preempted_request_ids == ["second"] and ids(out.scheduled) == ["first"]


def test_aborting_a_waiting_request_under_priority():
    s, _ = make("priority", max_num_seqs=1)
    a, b, c = req("a", 3, priority=2), req("b", 3, priority=1), req("c", 3, priority=3)
    for r in (a, b, c):
        s.add_request(r)
    s.finish_request(b, RequestStatus.FINISHED_ABORTED)
    assert ids(s.waiting) == ["a", "c"] and len(s.waiting) == 2 and b not in s.waiting
    assert ids(s.schedule().scheduled) == ["a"]


@pytest.mark.parametrize("queue_cls", [FCFSRequestQueue, PriorityRequestQueue])
def test_waiting_queue_interface(queue_cls):
    q = queue_cls()
    assert not q and len(q) == 0
    with pytest.raises(IndexError):
        q.peek()
    a, b, c = req("a", 1, arrival=1.0), req("b", 1, arrival=2.0), req("c", 1, arrival=3.0)
    q.add(b)
    q.add(c)
    q.requeue(a)                                       # fcfs: front; priority: its place (also first)
    assert q and len(q) == 3 and a in q and ids(q) == ["a", "b", "c"] and q.peek() is a
    q.remove(b)
    assert b not in q and ids(q) == ["a", "c"]
    with pytest.raises(ValueError):
        q.remove(b)
    assert q.popleft() is a and q.popleft() is c and not q


def test_check_priority():
    check_priority(0, "fcfs")
    check_priority(-7, "priority")
    with pytest.raises(ValueError) as err:
        check_priority(1, "fcfs")
    assert str(err.value) == NOT_ENABLED
    for bad in ("1", 1.0, True, None):
        with pytest.raises(ValueError, match="priority must be an int"):
            check_priority(bad, "priority")


def test_scheduler_config_policy_is_validated():
    assert SCHEDULING_POLICIES == ("fcfs", "priority")
    assert SchedulerConfig(1, 8, 16).policy == "fcfs"
    with pytest.raises(ValueError, match=r"policy must be one of \('fcfs', 'priority'\), got 'lifo'"):
        SchedulerConfig(1, 8, 16, policy="lifo")
