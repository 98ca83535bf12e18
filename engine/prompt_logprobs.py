"""Prompt logprobs (vLLM's `prompt_logprobs`): each prompt token's logprob given the tokens before it, its
rank and the top-k tokens at its position, computed in the steps that compute the prompt.

In such a step the hidden states of the request's prompt tokens (`hidden` holds every token of the step,
graph replays included; padding comes after the real tokens) go through the LM head in chunks of at most
MAX_ROWS_PER_CHUNK rows (a 151k vocabulary in float32 is 0.6 MB a row), then log_softmax in float32 on
the raw logits (no penalties or temperature, as vLLM). Position p scores prompt token p + 1; the last
prompt position scores the first generated token, which is no prompt logprob (the sampler takes it). The
results reach the host in one non-blocking copy per tensor, with the step's sampled tokens
(PendingStep); only steps with such tokens do any of this.
"""
from __future__ import annotations

import torch

from engine.outputs import TokenLogprobs
from engine.pending_step import to_host
from engine.request import Request
from engine.sampler import gather_logprobs
from scheduler.output import SchedulerOutput

MAX_ROWS_PER_CHUNK = 256

# per request: (the request, its new positions' (token ids, logprobs, the prompt token's rank))
PromptLogprobsResult = tuple[Request, list[TokenLogprobs]]


class PromptLogprobsStep:
    """The prompt logprobs one step computes, for `counts[i]` positions of `requests[i]` in order.

    token_ids `[M, K+1] int64` (the prompt token first, then the top K, K = the largest prompt_logprobs
    asked for), logprobs `[M, K+1] float32`, ranks `[M] int64`: host tensors (pinned when copied from
    CUDA; read them after the step's event)."""

    def __init__(self, requests: list[Request], counts: list[int], token_ids: torch.Tensor,
                 logprobs: torch.Tensor, ranks: torch.Tensor, is_cuda: bool) -> None:
        self.requests, self.counts, self.is_cuda = requests, counts, is_cuda
        self._host = (token_ids, logprobs, ranks)

    def results(self) -> list[PromptLogprobsResult]:
        """Per request, for the positions this step computed: the token ids (the prompt token first, then
        its top prompt_logprobs alternatives), their logprobs and the prompt token's rank."""
        ids, values, ranks = (t.tolist() for t in self._host)
        out, row = [], 0
        for req, count in zip(self.requests, self.counts):
            k = req.sampling_params.prompt_logprobs
            out.append((req, [(ids[r][:k + 1], values[r][:k + 1], ranks[r]) for r in range(row, row + count)]))
            row += count
        return out


def plan_prompt_logprobs(out: SchedulerOutput) -> tuple[list[Request], list[int], list[int], list[int]] | None:
    """The step's rows that need prompt logprobs: (requests, positions per request, the rows' indices in
    the step's tokens, the prompt tokens they score), or None when there are none. Advances each
    request's `num_launched`; positions launched before (a recompute after preemption) are skipped."""
    requests, counts, rows, targets = [], [], [], []
    start = 0
    for sched in out.scheduled:
        state, computed = sched.request.prompt_logprobs, sched.num_computed_tokens
        if state is not None and not state.all_launched:
            if computed > state.num_launched:
                raise RuntimeError(f"request {sched.request.request_id}: prompt tokens from {state.num_launched} "
                                   f"to {computed} were never computed, their prompt logprobs are lost")
            first, end = state.num_launched, min(computed + sched.num_new_tokens, state.num_positions)
            if first < end:
                rows.extend(range(start + first - computed, start + end - computed))
                targets.extend(sched.request.prompt_token_ids[first + 1:end + 1])
                requests.append(sched.request)
                counts.append(end - first)
                state.num_launched = end
        start += sched.num_new_tokens
    return (requests, counts, rows, targets) if rows else None


@torch.inference_mode()
def launch_prompt_logprobs(model, hidden: torch.Tensor, out: SchedulerOutput) -> PromptLogprobsStep | None:
    """Compute the prompt logprobs of the step's requests that ask for them and start their copy to the
    host; None when the step computes none. hidden `[T, hidden_size]` in the model dtype (the step's
    tokens in scheduled order, then padding)."""
    plan = plan_prompt_logprobs(out)
    if plan is None:
        return None
    requests, counts, rows, targets = plan
    k = max(r.sampling_params.prompt_logprobs for r in requests)
    index = torch.tensor([rows, targets], dtype=torch.int64)
    if hidden.is_cuda:
        index = index.pin_memory().to(hidden.device, non_blocking=True)
    ids, values, ranks = [], [], []
    for start in range(0, len(rows), MAX_ROWS_PER_CHUNK):
        chunk = index[:, start:start + MAX_ROWS_PER_CHUNK]
        logprobs = torch.log_softmax(model.compute_logits(hidden[chunk[0]]), dim=-1, dtype=torch.float32)
        chunk_ids, chunk_values, chunk_ranks = gather_logprobs(logprobs, chunk[1], k)
        ids.append(chunk_ids)
        values.append(chunk_values)
        ranks.append(chunk_ranks)
    host = [to_host(torch.cat(t)) for t in (ids, values, ranks)]
    return PromptLogprobsStep(requests, counts, *host, is_cuda=hidden.is_cuda)
