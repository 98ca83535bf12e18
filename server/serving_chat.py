"""POST /v1/chat/completions: messages -> chat template -> engine request -> response or SSE stream."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator

from engine.chat_template import render_chat
from engine.outputs import CompletionOutput
from server.errors import APIError
from server.protocol import (ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
                             ChatLogprobs, ChatMessage, ChatResponseMessage, ChatStreamChoice, DeltaMessage,
                             TokenLogprob, TopLogprob, UsageInfo)
from server.reasoning import ReasoningStream, split_reasoning
from server.serving import Serving, merge, sse, sse_stream


def _message_dict(message: ChatMessage) -> dict:
    """A message as the chat template expects it; content parts of type "text" are joined."""
    content = message.content
    if isinstance(content, list):
        texts = []
        for part in content:
            if part.get("type") != "text":
                raise APIError(400, f"only text content parts are supported, got {part.get('type')!r}", "messages")
            texts.append(str(part.get("text", "")))
        content = "".join(texts)
    out = {"role": message.role, "content": content or ""}
    if message.name:
        out["name"] = message.name
    return out


def chat_prompt_ids(serving: Serving, messages: list[ChatMessage], add_generation_prompt: bool = True,
                    template_kwargs: dict | None = None) -> list[int]:
    """The server's chat template (--chat-template, else the tokenizer's) rendered and tokenized; its
    errors are the request's 400."""
    conversation = [_message_dict(m) for m in messages]
    try:
        return render_chat(serving.tokenizer, conversation, add_generation_prompt, serving.chat_template,
                           template_kwargs)
    except ValueError as exc:
        raise APIError(400, str(exc), "messages") from exc


def _logprobs(serving: Serving, out: CompletionOutput, start: int, num_top: int) -> ChatLogprobs:
    content = []
    for token_id, top in zip(out.token_ids[start:], (out.logprobs or [])[start:]):
        token = serving.decode_token(token_id)
        ranked = sorted(top.items(), key=lambda kv: -kv[1])[:num_top]
        tops = [TopLogprob(token=serving.decode_token(t), logprob=lp,
                           bytes=list(serving.decode_token(t).encode())) for t, lp in ranked]
        content.append(TokenLogprob(token=token, logprob=top.get(token_id, float("-inf")),
                                    bytes=list(token.encode()), top_logprobs=tops))
    return ChatLogprobs(content=content)


async def create_chat_completion(serving: Serving, req: ChatCompletionRequest, timer_factory) -> object:
    """Validate, admit and return either a ChatCompletionResponse or an async iterator of SSE strings."""
    timer = timer_factory()     # latencies count from arrival
    serving.check_model(req.model)
    prompt = chat_prompt_ids(serving, req.messages, True, req.chat_template_kwargs)
    max_tokens = req.max_completion_tokens or req.max_tokens
    serving.check_prompt(prompt, max_tokens, "messages")
    if max_tokens is None:
        max_tokens = serving.default_max_tokens(prompt)
    num_top = req.top_logprobs or 0
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs to be true", "top_logprobs")
    params = serving.sampling_params(req, max_tokens, num_top if req.logprobs else None)
    streams = await serving.start("chatcmpl", [prompt], params)
    response_id = f"chatcmpl-{uuid.uuid4().hex}"
    if req.stream:
        include_usage = bool(req.stream_options and req.stream_options.include_usage)
        return sse_stream(_stream(serving, req, response_id, streams, len(prompt), num_top, include_usage,
                                  timer))
    return await _collect(serving, req, response_id, streams, len(prompt), num_top, timer)


async def _collect(serving, req, response_id, streams, num_prompt_tokens, num_top, timer):
    latest: dict[int, CompletionOutput] = {}
    async for _, out in merge(streams):
        if any(c.token_ids_delta for c in out.outputs):
            timer.on_tokens()
        latest.update({c.index: c for c in out.outputs})
    timer.finish()
    choices = [ChatChoice(index=i, message=_message(serving, c.text), finish_reason=c.finish_reason,
                          stop_reason=c.stop_reason,
                          logprobs=_logprobs(serving, c, 0, num_top) if req.logprobs else None)
               for i, c in sorted(latest.items())]
    return ChatCompletionResponse(id=response_id, model=serving.model_name, choices=choices,
                                  usage=_usage(num_prompt_tokens, latest))


def _message(serving: Serving, text: str) -> ChatResponseMessage:
    """The answer's message: all content, or with a reasoning parser its thinking apart."""
    if serving.reasoning_parser is None:
        return ChatResponseMessage(content=text)
    split = split_reasoning(serving.reasoning_parser, text)
    return ChatResponseMessage(content=split.content, reasoning_content=split.reasoning or None)


def _delta(streams: dict[int, ReasoningStream], parser: str | None, comp: CompletionOutput) -> DeltaMessage:
    """This step's new text of one choice; with a reasoning parser split into thinking and content
    (a tail that may be a tag waits for the next step)."""
    if parser is None:
        return DeltaMessage(content=comp.text_delta)
    split = streams.setdefault(comp.index, ReasoningStream(parser)).update(comp.text, comp.finished)
    return DeltaMessage(content=split.content or None, reasoning_content=split.reasoning or None)


def _usage(num_prompt_tokens: int, latest: dict[int, CompletionOutput]) -> UsageInfo:
    completion_tokens = sum(len(c.token_ids) for c in latest.values())
    return UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=num_prompt_tokens + completion_tokens)


async def _stream(serving, req, response_id, streams, num_prompt_tokens, num_top, include_usage,
                  timer) -> AsyncIterator[str]:
    def chunk(index: int, delta: DeltaMessage, logprobs=None, finish_reason=None) -> str:
        choice = ChatStreamChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason)
        return sse(ChatCompletionChunk(id=response_id, model=serving.model_name, choices=[choice]))

    latest: dict[int, CompletionOutput] = {}
    sent: dict[int, int] = {}
    reasoning: dict[int, ReasoningStream] = {}
    for index in range(req.n):
        yield chunk(index, DeltaMessage(role="assistant", content=""))
    async for _, out in merge(streams):
        if any(c.token_ids_delta for c in out.outputs):
            timer.on_tokens()
        for comp in out.outputs:
            latest[comp.index] = comp
            start = sent.get(comp.index, 0)
            delta = _delta(reasoning, serving.reasoning_parser, comp)
            if delta.content or delta.reasoning_content or (req.logprobs and len(comp.token_ids) > start):
                sent[comp.index] = len(comp.token_ids)
                logprobs = _logprobs(serving, comp, start, num_top) if req.logprobs else None
                yield chunk(comp.index, delta, logprobs)
            if comp.finished:
                yield chunk(comp.index, DeltaMessage(), finish_reason=comp.finish_reason)
    timer.finish()
    if include_usage:
        yield sse(ChatCompletionChunk(id=response_id, model=serving.model_name, choices=[],
                                      usage=_usage(num_prompt_tokens, latest)))
