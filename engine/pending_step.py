"""PendingStep: a launched step whose sampled tokens are still on their way to the host.

The runner starts non-blocking device-to-host copies of the sampled tokens (and logprobs) and records
an event; `result()` waits for that event only. Meanwhile the engine can schedule and launch the next
step, so the host's work overlaps the GPU's.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from engine.request import Request
from scheduler.output import SchedulerOutput


@dataclass
class RunnerOutput:
    """Per scheduled request: the sampled token (None while mid-prompt) and its logprobs if asked."""

    sampled: list[int | None]
    logprobs: list[dict[int, float] | None]


class PendingStep:
    def __init__(self, out: SchedulerOutput, sampling_rows: list[int], requests: list[Request],
                 token_ids: torch.Tensor | None, logprob_ids: torch.Tensor | None,
                 logprobs: torch.Tensor | None) -> None:
        """token_ids [N] int64, logprob_ids / logprobs [N, K+1] (or None): device tensors of the
        step's N sampling requests; copied to (pinned) host memory without blocking."""
        self.out, self.sampling_rows, self.requests = out, sampling_rows, requests
        self.event = None
        self._host = [_to_host(t) for t in (token_ids, logprob_ids, logprobs)]
        if token_ids is not None and token_ids.is_cuda:
            self.event = torch.cuda.Event()
            self.event.record()

    def result(self) -> RunnerOutput:
        """Wait for the copies; return the step's tokens and logprobs."""
        if self.event is not None:
            self.event.synchronize()
        num = len(self.out.scheduled)
        sampled: list[int | None] = [None] * num
        logprobs: list[dict[int, float] | None] = [None] * num
        token_ids, lp_ids, lp_values = self._host
        if token_ids is None:
            return RunnerOutput(sampled, logprobs)
        tokens = token_ids.tolist()
        pairs = [list(zip(i, v)) for i, v in zip(lp_ids.tolist(), lp_values.tolist())] if lp_ids is not None else None
        for k, i in enumerate(self.sampling_rows):
            sampled[i] = tokens[k]
            asked = self.requests[k].sampling_params.logprobs
            if pairs is not None and asked is not None:
                logprobs[i] = dict(pairs[k][: asked + 1])
        return RunnerOutput(sampled, logprobs)


def _to_host(t: torch.Tensor | None) -> torch.Tensor | None:
    if t is None or not t.is_cuda:
        return t
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    host.copy_(t, non_blocking=True)
    return host
