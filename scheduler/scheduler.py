"""Scheduler: which requests run this step, and how many tokens each.

Continuous batching: running requests go first (a decode is one token; an unfinished prompt continues
as a chunk), then waiting requests are admitted while the token budget (`max_num_batched_tokens`), the
sequence budget (`max_num_seqs`) and free KV blocks allow. A long prompt is split into chunks (chunked
prefill). When blocks run out, a running request is preempted: its blocks are freed and it goes back
to the waiting queue, to be recomputed later (its generated tokens are kept).

The policy (`SchedulerConfig.policy`, vLLM's `--scheduling-policy`) orders the waiting queue
(scheduler.waiting_queue) and picks the request to preempt: "fcfs" admits in arrival order and preempts
the newest running request, which goes back to the front; "priority" admits by (priority,
arrival_time), the smallest first, and preempts the running request with the largest (as vLLM V1),
which goes back to its place. Running requests are never preempted for a waiting one.
"""
from __future__ import annotations

from dataclasses import dataclass

from engine.checks import check
from engine.request import Request, RequestStatus
from kv_cache.block_manager import BlockManager
from scheduler.output import ScheduledRequest, SchedulerOutput
from scheduler.waiting_queue import SCHEDULING_POLICIES, WAITING_QUEUES, priority_key


@dataclass(frozen=True)
class SchedulerConfig:
    max_num_seqs: int
    max_num_batched_tokens: int
    max_model_len: int
    enable_chunked_prefill: bool = True
    policy: str = "fcfs"

    def __post_init__(self) -> None:
        check(self.policy in WAITING_QUEUES, "policy", self.policy, f"must be one of {SCHEDULING_POLICIES}")
        check(self.max_num_seqs > 0, "max_num_seqs", self.max_num_seqs, "must be positive")
        check(self.max_num_batched_tokens > 0, "max_num_batched_tokens", self.max_num_batched_tokens,
              "must be positive")
        if not self.enable_chunked_prefill:
            check(self.max_num_batched_tokens >= self.max_model_len, "max_num_batched_tokens",
                  self.max_num_batched_tokens, f"must be >= max_model_len ({self.max_model_len}) "
                  "without chunked prefill")


class Scheduler:
    def __init__(self, config: SchedulerConfig, block_manager: BlockManager) -> None:
        self.config = config
        self.block_manager = block_manager
        self.waiting = WAITING_QUEUES[config.policy]()
        self.running: list[Request] = []
        self._victim_index = _newest if config.policy == "fcfs" else _least_urgent
        self._finished_ids: list[str] = []
        self._preempted_ids: list[str] = []      # preempted in steps that were never launched (empty)
        self.num_preemptions = 0

    def add_request(self, request: Request) -> None:
        request.status = RequestStatus.WAITING
        self.waiting.add(request)

    def has_unfinished(self) -> bool:
        return bool(self.waiting or self.running)

    def finish_request(self, request: Request, status: RequestStatus) -> None:
        """Stop `request` (stop condition met or aborted) and free its blocks."""
        if request.is_finished:
            return
        if request in self.running:
            self.running.remove(request)
        elif request in self.waiting:
            self.waiting.remove(request)
        request.status = status
        self.block_manager.free(request)
        self._finished_ids.append(request.request_id)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self.config.max_num_batched_tokens
        budget, preempted = self._schedule_running(out, budget)
        if not preempted:
            self._schedule_waiting(out, budget)
        # An empty output is never launched: its finished and preempted ids (whose runner rows are to be
        # given back) wait for the next step that is.
        if out.scheduled:
            out.finished_request_ids, self._finished_ids = self._finished_ids, []
            out.preempted_request_ids[:0], self._preempted_ids = self._preempted_ids, []
        else:
            self._preempted_ids += out.preempted_request_ids
        return out

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> tuple[int, bool]:
        preempted = False
        running, max_model_len = self.running, self.config.max_model_len
        allocate_slots = self.block_manager.allocate_slots
        i = 0
        while i < len(running) and budget > 0:
            request = running[i]
            num_planned = request.num_tokens_with_inflight
            if num_planned >= max_model_len or request.will_finish_by_length:
                i += 1                                   # its token in flight ends it: nothing to run
                continue
            num_new = min(num_planned - request.num_computed_tokens, budget)
            while not allocate_slots(request, num_new):
                j = self._victim_index(running)
                victim = running[j]
                self._preempt(victim)
                out.preempted_request_ids.append(victim.request_id)
                preempted = True
                if victim is request:
                    break
                if j < i:                                # priority: it ran earlier in this step: undo that
                    budget += self._unschedule(out, victim)
                    i -= 1
            if request.status is not RequestStatus.RUNNING:
                break                                    # preempted itself: nothing more fits
            out.scheduled.append(self._scheduled(request, num_new, is_new=False))
            budget -= num_new
            i += 1
        return budget, preempted

    def _schedule_waiting(self, out: SchedulerOutput, budget: int) -> None:
        while self.waiting and budget > 0 and len(self.running) < self.config.max_num_seqs:
            request = self.waiting.peek()
            blocks, num_cached = self.block_manager.get_computed_blocks(request)
            num_new = request.num_tokens_with_inflight - num_cached
            if num_new > budget and not self.config.enable_chunked_prefill:
                break
            num_new = min(num_new, budget)
            if not self.block_manager.allocate_slots(request, num_new, blocks):
                break
            self.waiting.popleft()
            if request.status is RequestStatus.WAITING:
                request.num_cached_tokens = num_cached
            request.num_computed_tokens = num_cached
            request.status = RequestStatus.RUNNING
            if num_new > 1:     # a prefill chunk: the step stores all K/V before any attention (not decode-only),
                # so requests admitted after it may read its blocks in this step (n > 1 siblings share the prompt)
                self.block_manager.cache_computed_blocks(request, num_cached + num_new)
            self.running.append(request)
            out.scheduled.append(self._scheduled(request, num_new, is_new=True))
            budget -= num_new

    def _scheduled(self, request: Request, num_new: int, is_new: bool) -> ScheduledRequest:
        """Record the request's share of the step and advance its num_computed_tokens (the step will
        compute them; a later step may be scheduled before this one's tokens come back). Every
        scheduled request runs at least one token: SchedulerOutput.is_decode_only relies on it."""
        assert num_new >= 1, f"request {request.request_id} scheduled with {num_new} tokens"
        sched = ScheduledRequest(request=request, num_new_tokens=num_new,
                                 num_computed_tokens=request.num_computed_tokens,
                                 block_ids=self.block_manager.get_block_ids(request.request_id), is_new=is_new,
                                 samples=request.num_computed_tokens + num_new == request.num_tokens_with_inflight)
        request.num_computed_tokens += num_new
        return sched

    def _preempt(self, request: Request) -> None:
        self.running.remove(request)
        self.block_manager.free(request)
        request.status = RequestStatus.PREEMPTED
        request.num_computed_tokens = 0
        request.num_preemptions += 1
        self.num_preemptions += 1
        self.waiting.requeue(request)

    @staticmethod
    def _unschedule(out: SchedulerOutput, request: Request) -> int:
        """Take a request preempted after its turn out of this step; returns the tokens it had (0: it
        was skipped, its token in flight ends it)."""
        for k, sched in enumerate(out.scheduled):
            if sched.request is request:
                del out.scheduled[k]
                return sched.num_new_tokens
        return 0

    def update_from_output(self, out: SchedulerOutput, sampled: list[int | None]) -> list[Request]:
        """Take a launched step's results (the engine calls it once per launched step, after the step
        ran, before it finishes any request): register in the prefix cache the blocks the step filled,
        then append each scheduled request's sampled token (None: still mid-prompt). Tokens of requests
        finished meanwhile are dropped; a request preempted meanwhile keeps its token (it is recomputed
        with the rest). Returns the requests that got a new token (stop checks are the engine's)."""
        progressed = []
        block_size = self.block_manager.block_size if self.block_manager.enable_prefix_caching else 0
        for sched, token in zip(out.scheduled, sampled):
            request = sched.request
            if request.is_finished:
                continue
            # only a step that reached a block's end can have filled one (a decode: once in block_size steps)
            if block_size and sched.seq_len // block_size > sched.num_computed_tokens // block_size:
                self._cache_computed(sched)
            if token is not None:
                request.append_output_token(token)
                progressed.append(request)
        return progressed

    def _cache_computed(self, sched: ScheduledRequest) -> None:
        """Register the blocks that the step's tokens of `sched` completed, now that they are computed
        (a block registered earlier could be read in the very step that writes it, or keep its hash
        when that step's share is taken back). Only if the request still holds the blocks the step
        wrote: not preempted meanwhile (freed, perhaps re-admitted into other blocks)."""
        request = sched.request
        if (request.status is RequestStatus.RUNNING
                and sched.block_ids is self.block_manager.get_block_ids(request.request_id)):
            self.block_manager.cache_computed_blocks(request, sched.seq_len)


def _newest(running: list[Request]) -> int:
    """fcfs: preempt the running request admitted last."""
    return len(running) - 1


def _least_urgent(running: list[Request]) -> int:
    """priority: preempt the running request with the largest (priority, arrival_time); among equals
    the one admitted last."""
    return max(reversed(range(len(running))), key=lambda j: priority_key(running[j]))
