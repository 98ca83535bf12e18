"""How RequestOutputs cross from the engine's process to the server's: only what each step added.

A RequestOutput carries its cumulative text, token ids and logprobs; pickling them every step would
cost O(length) per token. `pack_output` keeps the step's deltas (and the prompt once, in a request's
first output, with its prompt logprobs: they are complete by then); the engine's process builds these
tuples straight from the output processor's deltas (`pack_completion`, `pack_prompt`: its packed mode),
never making the cumulative outputs at all; `OutputAssembler` on the other side
appends them to what it already holds and hands out RequestOutputs equal to the engine's. Logprobs
travel as plain tuples, (token id, logprob, rank, decoded_token) per Logprob, and are rebuilt as Logprobs.

The request's RequestOutputKind travels with its prompt (its value, an int). Only CUMULATIVE outputs are
rebuilt cumulative; DELTA and FINAL_ONLY outputs are made from the packed deltas alone (FINAL_ONLY's one
output: its deltas are all of it), so that the assembler keeps nothing that grows with the output and a
step's work on this side is O(what it added).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.outputs import CompletionOutput, Logprob, LogprobsDict, RequestOutput
from engine.sampling_params import RequestOutputKind

# (index, text_delta, token_ids_delta, finish_reason, stop_reason, packed logprobs_delta or None)
PackedCompletion = tuple
# (request_id, (prompt, prompt_token_ids, packed prompt_logprobs or None, RequestOutputKind value) or None,
#  finished, num_cached_tokens, metrics, completions)
PackedOutput = tuple
# one position's LogprobsDict: ((token id, logprob, rank, decoded_token), ...) in the dict's order
PackedLogprobs = tuple


def pack_logprobs(entry: LogprobsDict) -> PackedLogprobs:
    return tuple((token, lp.logprob, lp.rank, lp.decoded_token) for token, lp in entry.items())


def unpack_logprobs(packed: PackedLogprobs) -> LogprobsDict:
    return {token: Logprob(logprob, rank, text) for token, logprob, rank, text in packed}


def _pack_prompt_logprobs(entries: list[LogprobsDict | None] | None) -> list[PackedLogprobs | None] | None:
    return None if entries is None else [None if e is None else pack_logprobs(e) for e in entries]


def _unpack_prompt_logprobs(packed: list[PackedLogprobs | None] | None) -> list[LogprobsDict | None] | None:
    return None if packed is None else [None if e is None else unpack_logprobs(e) for e in packed]


def pack_completion(index: int, text_delta: str, token_ids_delta: list[int], finish_reason: str | None,
                    stop_reason: int | str | None, logprobs_delta: list[LogprobsDict] | None) -> PackedCompletion:
    """One sequence's part of a step: its deltas (logprobs: those of its new tokens, or None)."""
    logprobs = None if logprobs_delta is None else [pack_logprobs(e) for e in logprobs_delta]
    return (index, text_delta, token_ids_delta, finish_reason, stop_reason, logprobs)


def pack_prompt(prompt: str | None, prompt_token_ids: list[int], prompt_logprobs: list[LogprobsDict | None] | None,
                kind: RequestOutputKind = RequestOutputKind.CUMULATIVE) -> tuple:
    """What a request's first output carries once: its prompt, prompt logprobs and output kind."""
    return (prompt, prompt_token_ids, _pack_prompt_logprobs(prompt_logprobs), kind.value)


def pack_output(out: RequestOutput, first: bool,
                kind: RequestOutputKind = RequestOutputKind.CUMULATIVE) -> PackedOutput:
    """The step's part of `out` (an output of that kind); `first`: the request's first output (it carries the
    prompt). The engine's process packs its outputs as they are made instead (OutputProcessor's packed mode),
    to the same tuples."""
    completions = [pack_completion(c.index, c.text_delta, c.token_ids_delta, c.finish_reason, c.stop_reason,
                                   None if c.logprobs is None
                                   else c.logprobs[len(c.token_ids) - len(c.token_ids_delta):])
                   for c in out.outputs]
    prompt = pack_prompt(out.prompt, out.prompt_token_ids, out.prompt_logprobs, kind) if first else None
    return (out.request_id, prompt, out.finished, out.num_cached_tokens, out.metrics, completions)


@dataclass
class _Sequence:
    text: str = ""
    token_ids: list[int] = field(default_factory=list)
    logprobs: list[LogprobsDict] | None = None


@dataclass
class _Request:
    prompt: str | None
    prompt_token_ids: list[int]
    prompt_logprobs: list[LogprobsDict | None] | None
    kind: RequestOutputKind
    sequences: dict[int, _Sequence] = field(default_factory=dict)     # CUMULATIVE only


class OutputAssembler:
    """Rebuilds RequestOutputs of their request's kind from packed ones (CUMULATIVE: the fields so far;
    DELTA and FINAL_ONLY: the packed deltas as they are); forgets a request once it finished."""

    def __init__(self) -> None:
        self._requests: dict[str, _Request] = {}

    def unpack(self, packed: PackedOutput) -> RequestOutput:
        request_id, prompt, finished, num_cached_tokens, metrics, completions = packed
        state = self._requests.get(request_id)
        if state is None:
            if prompt is None:
                raise ValueError(f"request {request_id!r}: its first output carries no prompt")
            text, token_ids, prompt_logprobs, kind = prompt
            state = self._requests[request_id] = _Request(text, token_ids, _unpack_prompt_logprobs(prompt_logprobs),
                                                          RequestOutputKind(kind))
        prompt_logprobs = state.prompt_logprobs
        if state.kind is RequestOutputKind.CUMULATIVE:
            outputs = [_cumulative(state, c) for c in completions]
        else:
            outputs = [_delta(c) for c in completions]
            state.prompt_logprobs = None        # DELTA: with the first output only (vLLM's)
        if finished:
            del self._requests[request_id]
        return RequestOutput(request_id=request_id, prompt=state.prompt, prompt_token_ids=state.prompt_token_ids,
                             outputs=outputs, finished=finished, num_cached_tokens=num_cached_tokens,
                             metrics=metrics, prompt_logprobs=prompt_logprobs)

    def forget(self, request_id: str) -> None:
        """Drop a request that will send nothing more (aborted)."""
        self._requests.pop(request_id, None)


def _cumulative(state: _Request, packed: PackedCompletion) -> CompletionOutput:
    """A CUMULATIVE output's sequence: the packed deltas appended to what came before, its fields copied."""
    index, text_delta, ids_delta, finish_reason, stop_reason, logprobs_delta = packed
    seq = state.sequences.setdefault(index, _Sequence())
    seq.text += text_delta
    seq.token_ids += ids_delta
    if logprobs_delta is not None:
        if seq.logprobs is None:
            seq.logprobs = []
        seq.logprobs += [unpack_logprobs(e) for e in logprobs_delta]
    return CompletionOutput(
        index=index, text=seq.text, token_ids=list(seq.token_ids), finish_reason=finish_reason,
        stop_reason=stop_reason, logprobs=None if seq.logprobs is None else list(seq.logprobs),
        text_delta=text_delta, token_ids_delta=ids_delta)


def _delta(packed: PackedCompletion) -> CompletionOutput:
    """A DELTA or FINAL_ONLY output's sequence: the packed deltas in its cumulative-named fields too."""
    index, text_delta, ids_delta, finish_reason, stop_reason, logprobs_delta = packed
    logprobs = None if logprobs_delta is None else [unpack_logprobs(e) for e in logprobs_delta]
    return CompletionOutput(index=index, text=text_delta, token_ids=ids_delta, finish_reason=finish_reason,
                            stop_reason=stop_reason, logprobs=logprobs, text_delta=text_delta,
                            token_ids_delta=ids_delta)
