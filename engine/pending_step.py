"""PendingStep: a launched step whose sampled tokens are still on their way to the host.

The runner starts non-blocking device-to-host copies of the sampled tokens (and logprobs) and records
an event; `result()` waits for that event only. Meanwhile the engine can schedule and launch the next
step, so the host's work overlaps the GPU's. The step's prompt logprobs, when it computes any, travel
with them (engine/prompt_logprobs.py).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from engine.outputs import TokenLogprobs
from engine.request import Request
from scheduler.output import SchedulerOutput

if TYPE_CHECKING:
    from engine.prompt_logprobs import PromptLogprobsResult, PromptLogprobsStep
    from engine.sampler import SamplerOutput


@dataclass
class RunnerOutput:
    """Per scheduled request: the sampled token (None while mid-prompt) and, if asked, its logprobs as
    (token ids: the sampled token then its top k; their logprobs; the sampled token's rank); the prompt
    logprobs the step computed (per request that got some)."""

    sampled: list[int | None]
    logprobs: list[TokenLogprobs | None]
    prompt_logprobs: list[PromptLogprobsResult] = field(default_factory=list)


class PendingStep:
    def __init__(self, out: SchedulerOutput, sampling_rows: list[int], requests: list[Request],
                 sampled: SamplerOutput | None, prompt_logprobs: PromptLogprobsStep | None = None) -> None:
        """sampled: the Sampler's device tensors for the step's N sampling requests (token ids `[N]`;
        where some row asked for logprobs, their ids / values `[N, K+1]` and the sampled tokens' ranks
        `[N]`), None where the step samples nothing; copied to (pinned) host memory without blocking.
        prompt_logprobs: the step's, already on their way to the host."""
        self.out, self.sampling_rows, self.requests = out, sampling_rows, requests
        self.prompt_logprobs = prompt_logprobs
        self.event = None
        tensors = (None, None, None, None) if sampled is None else (
            sampled.sampled_token_ids, sampled.logprob_token_ids, sampled.logprobs, sampled.logprob_ranks)
        self._host = [to_host(t) for t in tensors]
        if sampled is not None:
            on_cuda = sampled.sampled_token_ids.is_cuda
        else:
            on_cuda = prompt_logprobs is not None and prompt_logprobs.is_cuda
        if on_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def result(self) -> RunnerOutput:
        """Wait for the copies; return the step's tokens and logprobs."""
        if self.event is not None:
            self.event.synchronize()
        num = len(self.out.scheduled)
        sampled: list[int | None] = [None] * num
        logprobs: list[TokenLogprobs | None] = [None] * num
        token_ids, lp_ids, lp_values, lp_ranks = self._host
        prompt_logprobs = self.prompt_logprobs.results() if self.prompt_logprobs is not None else []
        if token_ids is None:
            return RunnerOutput(sampled, logprobs, prompt_logprobs)
        tokens = token_ids.tolist()
        if lp_ids is not None:
            lp_ids, lp_values, lp_ranks = lp_ids.tolist(), lp_values.tolist(), lp_ranks.tolist()
        for k, i in enumerate(self.sampling_rows):
            sampled[i] = tokens[k]
            asked = self.requests[k].sampling_params.logprobs
            if lp_ids is not None and asked is not None:
                logprobs[i] = (lp_ids[k][:asked + 1], lp_values[k][:asked + 1], lp_ranks[k])
        return RunnerOutput(sampled, logprobs, prompt_logprobs)


def to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
