"""OutputProcessor: stop conditions, incremental detokenizing, and RequestOutputs per user request.

A user request with n > 1 is a group of n sequences (Requests); its RequestOutput carries one
CompletionOutput per sequence and is finished when all of them are. A group that asked for prompt logprobs
(its first sequence computes them) sends no output before they are complete, so every output carries them
(DELTA: the first only).
Logprobs become vLLM's Logprob objects here, where the tokenizer is: each token's text is
`tokenizer.decode([token_id])` (the server's decoding of one token), cached per token id.

Each group's outputs follow its SamplingParams.output_kind (RequestOutputKind): CUMULATIVE outputs whose
cumulative fields are snapshots (a held output never changes): O(output length) per output; DELTA outputs
whose text, token_ids and logprobs are what the step added (O(the step's new tokens and text)); FINAL_ONLY
one output when the group finished (no text decoded per step where no stop string reads it), which also
carries in its `metrics` the times of the steps that brought the group tokens (`TOKEN_TIMES`: the
server's latency histograms). `packed=True` (the engine's own process, engine/engine_core.py) makes each
output as engine/output_wire.py packs it, from the step's deltas alone, whatever the kind (FINAL_ONLY:
once): O(the step's new tokens and text) per sequence, the same tuples `pack_output` makes of the
snapshot outputs. The text is kept by OutputText (engine/output_text.py), which never copies it whole per
step where nobody reads it whole.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

from engine.detokenizer import IncrementalDetokenizer, StopStringChecker
from engine.output_text import OutputText
from engine.output_wire import PackedOutput, pack_completion, pack_prompt
from engine.outputs import TOKEN_TIMES, CompletionOutput, Logprob, LogprobsDict, RequestOutput, TokenLogprobs
from engine.request import Request, RequestStatus
from engine.sampling_params import RequestOutputKind

CUMULATIVE, DELTA, FINAL_ONLY = RequestOutputKind.CUMULATIVE, RequestOutputKind.DELTA, RequestOutputKind.FINAL_ONLY


@dataclass
class _Sequence:
    request: Request
    index: int
    detokenizer: IncrementalDetokenizer
    stops: StopStringChecker | None
    text: OutputText                # output text so far, stop string cut off once matched
    num_sent_tokens: int = 0


@dataclass
class _Group:
    request_id: str
    prompt: str | None
    prompt_token_ids: list[int]
    kind: RequestOutputKind = CUMULATIVE
    sequences: list[_Sequence] = field(default_factory=list)
    awaits_prompt_logprobs: bool = False
    prompt_logprobs: list[LogprobsDict | None] | None = None      # once complete: None first
    sent_prompt: bool = False       # an output went out (packed or DELTA: the first carries the prompt)
    token_times: list[float] = field(default_factory=list)     # FINAL_ONLY: each step that brought tokens


class OutputProcessor:
    """Per user request: its sequences' stop checks and text; `make_outputs` after each step's tokens (a
    group's last output, finished, also forgets it). packed: outputs as engine/output_wire.py's tuples."""

    def __init__(self, tokenizer, packed: bool = False) -> None:
        self.tokenizer = tokenizer
        self.packed = packed
        self.token_text = TokenTexts(tokenizer)
        self.groups: dict[str, _Group] = {}
        self._sequences: dict[str, tuple[_Group, _Sequence]] = {}

    def add_group(self, request_id: str, prompt: str | None, prompt_token_ids: list[int],
                  requests: list[Request]) -> None:
        """A user request's sequences (n of them); its outputs' kind is their SamplingParams.output_kind."""
        kind = requests[0].sampling_params.output_kind
        group = _Group(request_id, prompt, prompt_token_ids, kind)
        keep = not self.packed and kind is CUMULATIVE       # only snapshots read the whole text
        for i, req in enumerate(requests):
            sp = req.sampling_params
            detok = IncrementalDetokenizer(self.tokenizer, req.prompt_token_ids, sp.skip_special_tokens,
                                           sp.spaces_between_special_tokens)
            stops = StopStringChecker(sp.stop, sp.include_stop_str_in_output) if sp.stop else None
            tail_len = 0 if stops is None else stops.max_stop_len - 1
            seq = _Sequence(req, i, detok, stops, OutputText(tail_len, keep=keep))
            group.sequences.append(seq)
            self._sequences[req.request_id] = (group, seq)
        group.awaits_prompt_logprobs = requests[0].prompt_logprobs is not None
        self.groups[request_id] = group

    def ids_in_use(self, ids: list[str]) -> list[str]:
        """Those of `ids` that a live request or one of its sequences (n > 1: "<id>#<i>") goes by."""
        return [i for i in ids if i in self.groups or i in self._sequences]

    def pop_group(self, request_id: str) -> list[Request]:
        group = self.groups.pop(request_id, None)
        if group is None:
            return []
        for seq in group.sequences:
            self._sequences.pop(seq.request.request_id, None)
        return [seq.request for seq in group.sequences]

    def process_token(self, req: Request, logprobs: TokenLogprobs | None,
                      max_model_len: int) -> RequestStatus | None:
        """Take the request's newest token: logprobs (the runner's, made Logprobs), text, stop checks.
        Returns a finished status or None."""
        group, seq = self._sequences[req.request_id]
        if logprobs is not None:
            req.output_logprobs.append(logprobs_dict(logprobs, self.token_text))
        token = req.output_token_ids[-1]
        status = _token_stop(req, token, max_model_len)
        sp = req.sampling_params
        # vLLM's: the EOS or stop token that ended the sequence is not in its text unless asked for
        stop_token = status is RequestStatus.FINISHED_STOPPED and not sp.include_stop_str_in_output
        if group.kind is FINAL_ONLY and seq.stops is None:
            if status is not None:              # nobody reads the text before the end: decode once
                ids = req.output_token_ids[:-1] if stop_token else req.output_token_ids
                seq.text.append(seq.detokenizer.append(ids) + seq.detokenizer.flush())
            return status
        delta = seq.detokenizer.append([] if stop_token else [token])
        if status is not None:
            delta += seq.detokenizer.flush()
        seq.text.append(delta)
        # vLLM's: stop strings are looked for only once the output is past min_tokens
        past_min_tokens = req.num_output_tokens > sp.min_tokens
        if seq.stops is not None and status is not RequestStatus.FINISHED_STOPPED and past_min_tokens:
            # the region a stop string ending in the new text can start in: the text's bounded tail
            window = seq.text.tail(len(delta) + seq.stops.max_stop_len - 1)
            match = seq.stops.check(window, len(delta))
            if match is not None:
                stop_str, keep = match
                seq.text.cut(seq.text.length - len(window) + keep)
                req.stop_reason = stop_str
                status = RequestStatus.FINISHED_STOPPED
        return status

    def make_outputs(self, progressed: list[Request]) -> list[RequestOutput] | list[PackedOutput]:
        """The outputs of the groups whose sequences `progressed` (each group once); finished groups are
        forgotten."""
        groups: dict[str, _Group] = {}
        for req in progressed:
            group, _ = self._sequences[req.request_id]
            if group.request_id in groups or (group.awaits_prompt_logprobs and not self._take_prompt_logprobs(group)):
                continue
            groups[group.request_id] = group
        now = time.monotonic()
        outputs = []
        for group in groups.values():
            finished = all(s.request.is_finished for s in group.sequences)
            if group.kind is FINAL_ONLY:
                group.token_times.append(now)
                if not finished:
                    continue
            outputs.append(self._output(group, finished))
            if finished:
                self.pop_group(group.request_id)
        return outputs

    def _output(self, group: _Group, finished: bool) -> RequestOutput | PackedOutput:
        if self.packed:
            make = self._packed_completion
        else:
            make = self._completion if group.kind is CUMULATIVE else self._delta_completion
        completions = [make(seq, *self._advance(seq)) for seq in group.sequences]
        first_output, group.sent_prompt = not group.sent_prompt, True
        num_cached_tokens = group.sequences[0].request.num_cached_tokens
        metrics = {TOKEN_TIMES: group.token_times} if group.kind is FINAL_ONLY else {}
        if self.packed:
            prompt = pack_prompt(group.prompt, group.prompt_token_ids, group.prompt_logprobs,
                                 group.kind) if first_output else None
            return (group.request_id, prompt, finished, num_cached_tokens, metrics, completions)
        # DELTA: the prompt logprobs come with the first output only (vLLM's)
        prompt_logprobs = group.prompt_logprobs if group.kind is not DELTA or first_output else None
        return RequestOutput(request_id=group.request_id, prompt=group.prompt,
                             prompt_token_ids=group.prompt_token_ids, outputs=completions,
                             finished=finished, num_cached_tokens=num_cached_tokens, metrics=metrics,
                             prompt_logprobs=prompt_logprobs)

    @staticmethod
    def _advance(seq: _Sequence) -> tuple[str, list[int], int]:
        """Hand out what the sequence added since its last output (text: all but what may still become a
        stop string): (text delta, token ids delta, the index of its first new token)."""
        req = seq.request
        text = seq.text
        hold = 0
        if not req.is_finished and seq.stops is not None:
            hold = seq.stops.hold_back_len_for(text.tail(seq.stops.max_stop_len - 1))
        text_delta = text.take(max(text.num_sent, text.length - hold))
        start, seq.num_sent_tokens = seq.num_sent_tokens, req.num_output_tokens
        return text_delta, req.output_token_ids[start:], start

    @staticmethod
    def _completion(seq: _Sequence, text_delta: str, token_delta: list[int], start: int) -> CompletionOutput:
        """A snapshot: the cumulative fields copied."""
        req = seq.request
        return CompletionOutput(
            index=seq.index, text=seq.text.sent, token_ids=list(req.output_token_ids),
            finish_reason=req.finish_reason, stop_reason=req.stop_reason,
            logprobs=list(req.output_logprobs) if req.sampling_params.logprobs is not None else None,
            text_delta=text_delta, token_ids_delta=token_delta)

    @staticmethod
    def _delta_completion(seq: _Sequence, text_delta: str, token_delta: list[int], start: int) -> CompletionOutput:
        """What the sequence added since its last output, in the cumulative-named fields too (DELTA; and
        FINAL_ONLY's one output, whose delta is all of it)."""
        req = seq.request
        logprobs = req.output_logprobs[start:] if req.sampling_params.logprobs is not None else None
        return CompletionOutput(index=seq.index, text=text_delta, token_ids=token_delta,
                                finish_reason=req.finish_reason, stop_reason=req.stop_reason, logprobs=logprobs,
                                text_delta=text_delta, token_ids_delta=token_delta)

    @staticmethod
    def _packed_completion(seq: _Sequence, text_delta: str, token_delta: list[int], start: int) -> tuple:
        """The deltas alone, as output_wire packs them."""
        req = seq.request
        logprobs = req.output_logprobs[start:] if req.sampling_params.logprobs is not None else None
        return pack_completion(seq.index, text_delta, token_delta, req.finish_reason, req.stop_reason, logprobs)

    def _take_prompt_logprobs(self, group: _Group) -> bool:
        """Whether the group's prompt logprobs are complete; once they are, its outputs' list (vLLM's
        shape: None for the first prompt token) is made, once."""
        state = group.sequences[0].request.prompt_logprobs
        if not state.done:
            return False
        group.prompt_logprobs = [None, *(logprobs_dict(entry, self.token_text) for entry in state.entries)]
        group.awaits_prompt_logprobs = False
        return True


class TokenTexts:
    """token id -> its text alone, `tokenizer.decode([token_id])` (Serving.decode_token's), cached: a
    vocabulary's worth at most."""

    def __init__(self, tokenizer) -> None:
        self.tokenizer = tokenizer
        self._texts: dict[int, str] = {}

    def __call__(self, token_id: int) -> str:
        text = self._texts.get(token_id)
        if text is None:
            text = self._texts[token_id] = self.tokenizer.decode([token_id])
        return text


def logprobs_dict(logprobs: TokenLogprobs, token_text) -> LogprobsDict:
    """One position's (ids, logprobs, the scored token's rank) as vLLM's {token id: Logprob}: the scored
    token first with its rank, then the top k ranked 1..k by their place (the scored token, where it is
    among them, keeps its entry and rank)."""
    ids, values, rank = logprobs
    entry = {ids[0]: Logprob(values[0], rank, token_text(ids[0]))}
    for top_rank, (token, value) in enumerate(zip(ids[1:], values[1:]), start=1):
        if token not in entry:
            entry[token] = Logprob(value, top_rank, token_text(token))
    return entry


def _token_stop(req: Request, token: int, max_model_len: int) -> RequestStatus | None:
    """Stops decided by the token alone: EOS, stop_token_ids (after min_tokens), max_tokens, max_model_len."""
    sp = req.sampling_params
    if req.num_output_tokens > sp.min_tokens:     # the sampler masked these tokens before that
        if not sp.ignore_eos and token in req.eos_token_ids:
            return RequestStatus.FINISHED_STOPPED
        if sp.stop_token_ids and token in sp.stop_token_ids:
            req.stop_reason = token
            return RequestStatus.FINISHED_STOPPED
    if sp.max_tokens is not None and req.num_output_tokens >= sp.max_tokens:
        return RequestStatus.FINISHED_LENGTH
    if req.num_tokens >= max_model_len:
        return RequestStatus.FINISHED_LENGTH
    return None
