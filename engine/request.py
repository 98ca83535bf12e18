"""Request: one sequence being generated (n > 1 fans out into several Requests)."""
from __future__ import annotations

import enum
import time
from dataclasses import dataclass, field

from engine.outputs import LogprobsDict, TokenLogprobs
from engine.sampling_params import SamplingParams
from engine.structured_outputs import ChoiceConstraint


class RequestStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED_STOPPED = "stop"
    FINISHED_LENGTH = "length"
    FINISHED_ABORTED = "abort"

    @property
    def finished(self) -> bool:
        return self in (RequestStatus.FINISHED_STOPPED, RequestStatus.FINISHED_LENGTH, RequestStatus.FINISHED_ABORTED)


@dataclass
class PromptLogprobs:
    """A request's prompt logprobs (SamplingParams.prompt_logprobs), gathered over its prompt's steps.

    `entries[p]` is (token ids: prompt token p + 1, then the top-k tokens at that position, most likely
    first; their logprobs given tokens 0..p; that prompt token's rank, 1: the most likely), for p in
    [0, num_positions), num_positions = prompt length - 1 (the output processor makes them Logprobs).
    `num_launched`: the positions that launched steps compute (their results come back a step later
    with async scheduling); a recompute after preemption skips them, and the prefix cache serves no
    more tokens than that while some are left.
    """

    num_positions: int
    num_launched: int = 0
    entries: list[TokenLogprobs] = field(default_factory=list)

    @property
    def all_launched(self) -> bool:
        return self.num_launched >= self.num_positions

    @property
    def done(self) -> bool:
        return len(self.entries) >= self.num_positions


@dataclass(eq=False)
class Request:
    """State of one sequence across steps.

    `num_computed_tokens` counts tokens whose K/V are in the cache; the tokens still to compute are
    `all_token_ids[num_computed_tokens:]`. After preemption (recompute) it returns to 0 and the prompt
    plus the outputs so far are prefilled again. `priority` orders the waiting queue under the priority
    scheduling policy (lower first, ties by `arrival_time`); 0 under fcfs. `prompt_logprobs` gathers
    them when the sampling params ask for them. `bad_words_token_ids`: the params' bad_words as token-id
    sequences (engine/bad_words.py; tokenized once by LLMEngine.add_request); `choice`: the token table of
    the params' structured_outputs choices (engine/structured_outputs.py), built there too.
    """

    request_id: str
    prompt_token_ids: list[int]
    sampling_params: SamplingParams
    eos_token_ids: tuple[int, ...] = ()
    arrival_time: float = field(default_factory=time.monotonic)
    priority: int = 0
    bad_words_token_ids: tuple[tuple[int, ...], ...] = ()
    choice: ChoiceConstraint | None = None
    output_token_ids: list[int] = field(default_factory=list)
    output_logprobs: list[LogprobsDict] = field(default_factory=list)
    num_computed_tokens: int = 0
    num_inflight: int = 0               # sampled on the device, not yet appended (overlapped steps)
    num_cached_tokens: int = 0          # prompt tokens served from the prefix cache at first admission
    num_preemptions: int = 0
    status: RequestStatus = RequestStatus.WAITING
    stop_reason: int | str | None = None
    first_token_time: float | None = None

    def __post_init__(self) -> None:
        self.all_token_ids: list[int] = list(self.prompt_token_ids)
        self.prompt_logprobs: PromptLogprobs | None = None
        if self.sampling_params.prompt_logprobs is not None:
            self.prompt_logprobs = PromptLogprobs(len(self.prompt_token_ids) - 1)

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.all_token_ids)

    @property
    def num_tokens_with_inflight(self) -> int:
        """Known tokens plus those still being sampled: what the scheduler plans with."""
        return len(self.all_token_ids) + self.num_inflight

    @property
    def num_cacheable_tokens(self) -> int:
        """Leading tokens the prefix cache may serve: all but the last (its logits are needed); while
        prompt logprobs are left to compute, only those whose logprobs a step computes already (cached
        tokens are never computed; vLLM skips the cache lookup for such requests)."""
        state = self.prompt_logprobs
        if state is not None and not state.all_launched:
            return min(self.num_tokens - 1, state.num_launched)
        return self.num_tokens - 1

    @property
    def will_finish_by_length(self) -> bool:
        """True when the tokens in flight already reach max_tokens: nothing more to schedule."""
        mt = self.sampling_params.max_tokens
        return self.num_inflight > 0 and mt is not None and self.num_output_tokens + self.num_inflight >= mt

    @property
    def num_output_tokens(self) -> int:
        return len(self.output_token_ids)

    def append_output_token(self, token_id: int) -> None:
        self.num_inflight = max(0, self.num_inflight - 1)
        self.output_token_ids.append(token_id)
        self.all_token_ids.append(token_id)

    @property
    def is_finished(self) -> bool:
        return self.status.finished

    @property
    def finish_reason(self) -> str | None:
        return self.status.value if self.status.finished else None
