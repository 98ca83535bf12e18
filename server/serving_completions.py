"""POST /v1/completions: prompt(s) -> engine requests -> one response or an SSE stream."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from engine.outputs import CompletionOutput, LogprobsDict, RequestOutput
from server.errors import APIError
from server.protocol import (CompletionChoice, CompletionLogprobs, CompletionRequest, CompletionResponse,
                             CompletionStreamChoice, CompletionStreamResponse, UsageInfo)
from server.prompt_truncation import truncate_prompts
from server.request_fields import check_fields, stream_usage
from server.serving import ResponseHead, Serving, finite_logprob, merge, sse, sse_stream, token_logprob


def _prompts(serving: Serving, req: CompletionRequest) -> list[list[int]]:
    """The request's prompts as token-id lists (str | list[str] | list[int] | list[list[int]])."""
    prompt = req.prompt
    if isinstance(prompt, str):
        items: list = [prompt]
    elif prompt and all(isinstance(p, int) for p in prompt):
        items = [prompt]
    else:
        items = list(prompt)
    if not items:
        raise APIError(400, "prompt must not be empty", "prompt")
    return [serving.tokenizer.encode(p) if isinstance(p, str) else list(p) for p in items]


def _check(req: CompletionRequest) -> None:
    if req.best_of is not None and req.best_of != 1:
        raise APIError(400, f"best_of must be 1 (best_of > 1 is not supported), got {req.best_of}", "best_of")
    if req.suffix:
        raise APIError(400, "suffix is not supported", "suffix")
    if req.max_tokens == 0 and not req.echo:
        raise APIError(400, "max_tokens must be at least 1 (0 only with echo: the prompt alone)", "max_tokens")


def _engine_prompt_logprobs(req: CompletionRequest) -> int | None:
    """The prompt logprobs the engine computes (vLLM's rule): prompt_logprobs, else with echo as many as
    logprobs (the echoed prompt's tokens then lead the choice's logprobs)."""
    if req.prompt_logprobs is not None:
        return req.prompt_logprobs
    return req.logprobs if req.echo else None


class _Choices:
    """Per-choice bookkeeping: each prompt's first RequestOutput (the prompt and its logprobs), and per choice
    its final output (a response) or, streaming, the tokens and the logprobs' text offsets so far.
    echo_only: max_tokens 0 with echo, the prompt alone is the answer."""

    def __init__(self, serving: Serving, n: int, prompt_texts: list[str], echo: bool, num_logprobs: int | None,
                 echo_only: bool = False, as_ids: bool = False):
        self.serving, self.n, self.echo, self.num_logprobs = serving, n, echo, num_logprobs
        self.as_ids = as_ids        # logprobs name tokens "token_id:{id}"
        self.want_logprobs, self.echo_only = num_logprobs is not None, echo_only
        self.prompt_texts = prompt_texts
        self.latest: dict[int, CompletionOutput] = {}
        self.requests: dict[int, RequestOutput] = {}
        self.echoed: set[int] = set()
        self.num_tokens: dict[int, int] = {}
        self.text_len: dict[int, int] = {}

    def index(self, prompt_idx: int, out: CompletionOutput) -> int:
        return prompt_idx * self.n + out.index

    def logprobs(self, index: int, out: CompletionOutput | None,
                 prompt: RequestOutput | None = None) -> CompletionLogprobs | None:
        """OpenAI completions logprobs of out's tokens (all of a final output, a streamed one's new ones),
        after the echoed `prompt`'s tokens (None for the first one's logprob and top logprobs); text offsets
        continue the choice's tokens."""
        if not self.want_logprobs:
            return None
        result = CompletionLogprobs()
        if prompt is not None:
            self._append(result, index, prompt.prompt_token_ids, prompt.prompt_logprobs)
        if out is not None:
            self._append(result, index, out.token_ids, out.logprobs or [])
        return result

    def _append(self, result: CompletionLogprobs, index: int, token_ids: list[int],
                logprobs: list[LogprobsDict | None]) -> None:
        offset = self.text_len.get(index, 0)
        for token_id, top in zip(token_ids, logprobs):
            token = self.serving.decode_token(token_id)
            result.tokens.append(self.serving.logprob_token(token_id, token, self.as_ids))
            result.token_logprobs.append(None if top is None else finite_logprob(token_logprob(top, token_id)))
            result.top_logprobs.append(None if top is None else self._top(top))
            result.text_offset.append(offset)
            offset += len(token)
        self.text_len[index] = offset

    def _top(self, top: LogprobsDict) -> dict[str, float]:
        """The token and the top `logprobs` alternatives (a prompt position may hold more), most likely first."""
        items = list(top.items())[:self.num_logprobs + 1]
        return {self.serving.logprob_token(t, lp.decoded_token, self.as_ids): finite_logprob(lp.logprob)
                for t, lp in sorted(items, key=lambda kv: -kv[1].logprob)}


async def create_completion(serving: Serving, req: CompletionRequest, timer_factory,
                            request_id: str | None = None) -> object:
    """Validate, admit and return either a CompletionResponse or an async iterator of SSE strings; the
    response's id is `cmpl-<request_id>` (vLLM's X-Request-Id header) or `cmpl-<a random hex>`."""
    timer = timer_factory()     # latencies count from arrival
    model = serving.check_model(req.model)
    check_fields(req)
    _check(req)
    prompts = truncate_prompts(_prompts(serving, req), req.truncate_prompt_tokens, serving.max_model_len)
    max_tokens = req.max_tokens if req.max_tokens is not None else min(
        serving.default_max_tokens(p) for p in prompts)
    for ids in prompts:
        serving.check_prompt(ids, max_tokens)
    echo_only = max_tokens == 0         # the engine generates one token, which is not returned (vLLM's)
    params = serving.sampling_params(req, max_tokens or 1, req.logprobs, _engine_prompt_logprobs(req))
    prompt_texts = [serving.tokenizer.decode(ids) for ids in prompts] if req.echo else [""] * len(prompts)
    choices = _Choices(serving, req.n, prompt_texts, req.echo, req.logprobs, echo_only,
                       serving.tokens_as_ids_for(req))
    streams = await serving.start("cmpl", prompts, params, req.priority)
    head = ResponseHead(f"cmpl-{request_id or uuid.uuid4().hex}", model)
    if req.stream:
        usage_flags = stream_usage(req.stream_options)
        return sse_stream(_stream(serving, head, streams, choices, prompts, usage_flags, timer))
    return await _collect(serving, head, streams, choices, prompts, timer)


async def _collect(serving, head, streams, choices: _Choices, prompts, timer) -> CompletionResponse:
    """The response, from each prompt's final output (FINAL_ONLY: its only one)."""
    async for prompt_idx, out in merge(streams):
        timer.on_output(out, prompt_idx)
        choices.requests[prompt_idx] = out
        for comp in out.outputs:
            choices.latest[choices.index(prompt_idx, comp)] = comp
    timer.finish()
    result = []
    prompt_logprobs = {i: serving.prompt_logprobs(out) for i, out in choices.requests.items()}
    for index in sorted(choices.latest):
        comp, prompt_idx = choices.latest[index], index // choices.n
        echoed = choices.requests[prompt_idx] if choices.echo else None
        text = choices.prompt_texts[prompt_idx] + ("" if choices.echo_only else comp.text)
        result.append(CompletionChoice(index=index, text=text, prompt_logprobs=prompt_logprobs[prompt_idx],
                                       logprobs=choices.logprobs(index, None if choices.echo_only else comp, echoed),
                                       finish_reason=comp.finish_reason, stop_reason=comp.stop_reason))
    return CompletionResponse(id=head.id, model=head.model, choices=result,
                              usage=_usage(prompts, sum(len(c.token_ids) for c in choices.latest.values())))


def _usage(prompts: list[list[int]], completion_tokens: int) -> UsageInfo:
    """The usage of `prompts` and `completion_tokens` (all for a response; one choice's for vLLM's per-chunk
    usage)."""
    prompt_tokens = sum(len(p) for p in prompts)
    return UsageInfo(prompt_tokens=prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=prompt_tokens + completion_tokens)


async def _stream(serving, head, streams, choices: _Choices, prompts, usage_flags: tuple[bool, bool],
                  timer) -> AsyncIterator[str]:
    """The SSE chunks of DELTA outputs: each choice's echoed prompt (with its logprobs, at the choice's first
    output), text deltas and finish; `usage_flags` (stream_usage): a last usage-only chunk (all prompts and
    choices), and on every chunk its choice's usage so far (its prompt and tokens, as vLLM's)."""
    include_usage, continuous_usage = usage_flags

    def chunk(index: int, text: str, logprobs=None, finish_reason=None, stop_reason=None) -> str:
        choice = CompletionStreamChoice(index=index, text=text, logprobs=logprobs, finish_reason=finish_reason,
                                        stop_reason=stop_reason)
        usage = _usage([prompts[index // choices.n]], choices.num_tokens[index]) if continuous_usage else None
        return sse(CompletionStreamResponse(id=head.id, model=head.model, choices=[choice], usage=usage))

    done: set[int] = set()      # choices whose finish went out (a group's later outputs still carry them)
    async for prompt_idx, out in merge(streams):
        timer.on_output(out, prompt_idx)
        first = choices.requests.setdefault(prompt_idx, out)     # DELTA: it alone has the prompt logprobs
        for comp in out.outputs:
            index = choices.index(prompt_idx, comp)
            if index in done:
                continue
            if comp.finished():
                done.add(index)
            choices.num_tokens[index] = choices.num_tokens.get(index, 0) + len(comp.token_ids)
            if choices.echo_only:               # one chunk, once its (unreturned) token is there
                if comp.finished():
                    yield chunk(index, choices.prompt_texts[prompt_idx], choices.logprobs(index, None, first),
                                comp.finish_reason, comp.stop_reason)
                continue
            if choices.echo and index not in choices.echoed:
                choices.echoed.add(index)
                yield chunk(index, choices.prompt_texts[prompt_idx], choices.logprobs(index, None, first))
            if not (comp.text or comp.finished() or (choices.want_logprobs and comp.token_ids)):
                continue
            yield chunk(index, comp.text, choices.logprobs(index, comp), comp.finish_reason, comp.stop_reason)
    timer.finish()
    if include_usage:
        yield sse(CompletionStreamResponse(id=head.id, model=head.model, choices=[],
                                           usage=_usage(prompts, sum(choices.num_tokens.values()))))
