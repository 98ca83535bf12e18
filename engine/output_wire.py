"""How RequestOutputs cross from the engine's process to the server's: only what each step added.

A RequestOutput carries its cumulative text, token ids and logprobs; pickling them every step would
cost O(length) per token. `pack_output` keeps the step's deltas (and the prompt once, in a request's
first output, with its prompt logprobs: they are complete by then); the engine's process builds these
tuples straight from the output processor's deltas (`pack_completion`, `pack_prompt`: its packed mode),
never making the cumulative outputs at all; `OutputAssembler` on the other side
appends them to what it already holds and hands out RequestOutputs equal to the engine's. Logprobs
travel as plain tuples, (token id, logprob, rank, decoded_token) per Logprob, and are rebuilt as Logprobs.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from engine.outputs import CompletionOutput, Logprob, LogprobsDict, RequestOutput

# (index, text_delta, token_ids_delta, finish_reason, stop_reason, packed logprobs_delta or None)
PackedCompletion = tuple
# (request_id, (prompt, prompt_token_ids, packed prompt_logprobs or None) or None, finished,
#  num_cached_tokens, metrics, completions)
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


def pack_prompt(prompt: str | None, prompt_token_ids: list[int],
                prompt_logprobs: list[LogprobsDict | None] | None) -> tuple:
    """What a request's first output carries once: its prompt and prompt logprobs."""
    return (prompt, prompt_token_ids, _pack_prompt_logprobs(prompt_logprobs))


def pack_output(out: RequestOutput, first: bool) -> PackedOutput:
    """The step's part of `out`; `first`: the request's first output (it carries the prompt). The engine's
    process packs its outputs as they are made instead (OutputProcessor's packed mode), to the same tuples."""
    completions = [pack_completion(c.index, c.text_delta, c.token_ids_delta, c.finish_reason, c.stop_reason,
                                   None if c.logprobs is None
                                   else c.logprobs[len(c.token_ids) - len(c.token_ids_delta):])
                   for c in out.outputs]
    prompt = pack_prompt(out.prompt, out.prompt_token_ids, out.prompt_logprobs) if first else None
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
    sequences: dict[int, _Sequence] = field(default_factory=dict)


class OutputAssembler:
    """Rebuilds cumulative RequestOutputs from packed ones; forgets a request once it finished."""

    def __init__(self) -> None:
        self._requests: dict[str, _Request] = {}

    def unpack(self, packed: PackedOutput) -> RequestOutput:
        request_id, prompt, finished, num_cached_tokens, metrics, completions = packed
        state = self._requests.get(request_id)
        if state is None:
            if prompt is None:
                raise ValueError(f"request {request_id!r}: its first output carries no prompt")
            text, token_ids, prompt_logprobs = prompt
            state = self._requests[request_id] = _Request(text, token_ids, _unpack_prompt_logprobs(prompt_logprobs))
        outputs = [self._completion(state, c) for c in completions]
        if finished:
            del self._requests[request_id]
        return RequestOutput(request_id=request_id, prompt=state.prompt, prompt_token_ids=state.prompt_token_ids,
                             outputs=outputs, finished=finished, num_cached_tokens=num_cached_tokens,
                             metrics=metrics, prompt_logprobs=state.prompt_logprobs)

    def forget(self, request_id: str) -> None:
        """Drop a request that will send nothing more (aborted)."""
        self._requests.pop(request_id, None)

    @staticmethod
    def _completion(state: _Request, packed: PackedCompletion) -> CompletionOutput:
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
