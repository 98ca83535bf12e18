"""SchedulerOutput: what runs in one engine step."""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.request import Request


@dataclass
class ScheduledRequest:
    """One request's share of a step: `num_new_tokens` tokens starting at `num_computed_tokens`.

    `is_new` is True the first step after admission or resumption (the runner must (re)write its block
    table row); `block_ids` are all its KV blocks after this step's allocation.
    """

    request: Request
    num_new_tokens: int
    num_computed_tokens: int
    block_ids: list[int]
    is_new: bool
    samples: bool = False   # this step reaches the request's last known token: a new token is sampled

    @property
    def seq_len(self) -> int:
        return self.num_computed_tokens + self.num_new_tokens


@dataclass
class SchedulerOutput:
    scheduled: list[ScheduledRequest] = field(default_factory=list)
    finished_request_ids: list[str] = field(default_factory=list)   # freed since the last step
    preempted_request_ids: list[str] = field(default_factory=list)

    @property
    def num_batched_tokens(self) -> int:
        return sum(s.num_new_tokens for s in self.scheduled)

    @property
    def is_decode_only(self) -> bool:
        """Every request runs exactly one token (each runs at least one: Scheduler._scheduled
        asserts it), so the step's token count equals its request count."""
        return self.num_batched_tokens == len(self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled
