"""POST /v1/chat/completions: messages (and tools) -> chat template -> engine request -> response or SSE
stream; the answer's thinking (--reasoning-parser) and tool calls (--tool-call-parser) apart."""
from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass

from engine.chat_template import message_text, render_chat
from engine.outputs import CompletionOutput
from server.errors import APIError
from server.prompt_truncation import truncate_prompts
from server.protocol import (ChatChoice, ChatCompletionChunk, ChatCompletionRequest, ChatCompletionResponse,
                             ChatLogprobs, ChatMessage, ChatResponseMessage, ChatStreamChoice, DeltaMessage,
                             TokenLogprob, TopLogprob, UsageInfo)
from server.protocol_tools import ChatCompletionToolsParam
from server.reasoning import ReasoningStream, prompt_think_state, split_reasoning
from server.request_fields import check_fields, stream_usage
from server.serving import ResponseHead, Serving, finite_logprob, token_logprob, merge, sse, sse_stream
from server.tool_calls import ToolCallParser, tool_call_messages
from server.tool_parsers import TOOL_CALL_PARSERS

AUTO_NEEDS_FLAGS = '"auto" tool choice requires --enable-auto-tool-choice and --tool-call-parser to be set'
PROMPT_TAIL_TOKENS = 32     # the prompt's last tokens, whose text says whether it opened or closed a think block


@dataclass(frozen=True)
class AnswerParsers:
    """How a request's answers are read: the reasoning parser (None: all content) with what the prompt's
    end did to the think block (server/reasoning.py's prompt_think_state), and the tool-call parser."""
    reasoning: str | None = None
    prompt_state: str | None = None
    tools: ToolCallParser | None = None


def _message_dict(message: ChatMessage) -> dict:
    """A message as the chat template expects it; content parts of type "text" are joined (message_text)."""
    try:
        content = message_text(message.content)
    except ValueError as exc:
        raise APIError(400, str(exc), "messages") from exc
    out = {"role": message.role, "content": content or ""}
    if message.name:
        out["name"] = message.name
    if message.tool_calls is not None:      # render_chat gives the template their arguments as dicts
        out["tool_calls"] = [call.model_dump() for call in message.tool_calls]
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    return out


def chat_prompt_ids(serving: Serving, messages: list[ChatMessage], add_generation_prompt: bool = True,
                    template_kwargs: dict | None = None, tools: list[ChatCompletionToolsParam] | None = None,
                    continue_final_message: bool = False) -> list[int]:
    """The server's chat template (--chat-template, else the tokenizer's) rendered with the messages and
    the tools (the template's `tools`, as vLLM passes them) and tokenized; its errors are the request's 400."""
    conversation = [_message_dict(m) for m in messages]
    tool_dicts = None if tools is None else [tool.model_dump() for tool in tools]
    try:
        return render_chat(serving.tokenizer, conversation, add_generation_prompt, serving.chat_template,
                           template_kwargs, tool_dicts, continue_final_message)
    except ValueError as exc:
        raise APIError(400, str(exc), "messages") from exc


def tool_call_parser(serving: Serving, req: ChatCompletionRequest) -> ToolCallParser | None:
    """The parser of the answers' tool calls (the one the server's --tool-call-parser names), or None
    where they are not parsed. As vLLM: tools without a tool_choice mean "auto", which needs the
    server's --enable-auto-tool-choice and --tool-call-parser (else 400); "none": tools are rendered,
    answers are text. "required" or a named function needs guided decoding, which this engine has
    not: 400, as is a tool_choice without tools (an empty list is given tools, none to call)."""
    choice = req.tool_choice
    if choice is None:
        choice = "auto" if req.tools else "none"
    if choice == "none":
        return None
    if req.tools is None:
        raise APIError(400, "When using `tool_choice`, `tools` must be set.", "tool_choice")
    if choice == "auto":
        if not serving.auto_tool_choice:
            raise APIError(400, AUTO_NEEDS_FLAGS, "tool_choice")
        return TOOL_CALL_PARSERS[serving.tool_call_parser] if req.tools else None   # tools [] : nothing to call
    shown = repr(choice) if isinstance(choice, str) else f"naming function {choice.function.name!r}"
    raise APIError(400, f'tool_choice {shown} needs guided decoding, which this server does not have; '
                        'use "auto" (with --enable-auto-tool-choice) or "none"', "tool_choice")


def _logprobs(serving: Serving, req: ChatCompletionRequest, out: CompletionOutput, num_top: int) -> ChatLogprobs:
    """The chat logprobs of out's tokens (all of a final output, a streamed one's new ones)."""
    as_ids = serving.tokens_as_ids_for(req)
    content = []
    for token_id, top in zip(out.token_ids, out.logprobs or []):
        text = serving.decode_token(token_id)
        ranked = sorted(top.items(), key=lambda kv: -kv[1].logprob)[:num_top]
        tops = [TopLogprob(token=serving.logprob_token(t, lp.decoded_token, as_ids),
                           logprob=finite_logprob(lp.logprob),
                           bytes=list(lp.decoded_token.encode())) for t, lp in ranked]
        content.append(TokenLogprob(token=serving.logprob_token(token_id, text, as_ids),
                                    logprob=finite_logprob(token_logprob(top, token_id)),
                                    bytes=list(text.encode()), top_logprobs=tops))
    return ChatLogprobs(content=content)


async def create_chat_completion(serving: Serving, req: ChatCompletionRequest, timer_factory,
                                 request_id: str | None = None) -> object:
    """Validate, admit and return either a ChatCompletionResponse or an async iterator of SSE strings; the
    response's id is `chatcmpl-<request_id>` (X-Request-Id or the body's request_id) or `chatcmpl-<random hex>`."""
    timer = timer_factory()     # latencies count from arrival
    model = serving.check_model(req.model)
    check_fields(req)
    tool_parser = tool_call_parser(serving, req)
    if tool_parser is not None and tool_parser.keeps_special_tokens:
        req.skip_special_tokens = False     # as vLLM's adjust_request: the tags may be special tokens
    prompt = chat_prompt_ids(serving, req.messages, req.add_generation_prompt, req.chat_template_kwargs, req.tools,
                             req.continue_final_message)
    prompt, = truncate_prompts([prompt], req.truncate_prompt_tokens, serving.max_model_len)
    max_tokens = req.max_completion_tokens or req.max_tokens
    serving.check_prompt(prompt, max_tokens, "messages")
    if max_tokens is None:
        max_tokens = serving.default_max_tokens(prompt)
    num_top = req.top_logprobs or 0
    if req.top_logprobs is not None and not req.logprobs:
        raise APIError(400, "top_logprobs needs logprobs to be true", "top_logprobs")
    params = serving.sampling_params(req, max_tokens, num_top if req.logprobs else None, req.prompt_logprobs)
    streams = await serving.start("chatcmpl", [prompt], params, req.priority)
    head = ResponseHead(f"chatcmpl-{request_id or uuid.uuid4().hex}", model)
    parsers = _answer_parsers(serving, req, prompt, tool_parser)
    if req.stream:
        return sse_stream(_stream(serving, req, head, streams, len(prompt), num_top, timer, parsers))
    return await _collect(serving, req, head, streams, len(prompt), num_top, timer, parsers)


async def _collect(serving, req, head, streams, num_prompt_tokens, num_top, timer, parsers):
    """The response, from the final output (FINAL_ONLY: the only one)."""
    latest: dict[int, CompletionOutput] = {}
    prompt_logprobs = None
    async for _, out in merge(streams):
        timer.on_output(out)
        latest.update({c.index: c for c in out.outputs})
        if out.finished:
            prompt_logprobs = serving.prompt_logprobs(out)
    timer.finish()
    choices, role = [], _response_role(serving, req)
    echo = _echo_text(req, role)
    for i, c in sorted(latest.items()):
        message = _message(parsers, c.text)
        message.role = role
        if echo:
            message.content = echo + (message.content or "")
        choices.append(ChatChoice(index=i, message=message, stop_reason=c.stop_reason,
                                  finish_reason="tool_calls" if message.tool_calls else c.finish_reason,
                                  logprobs=_logprobs(serving, req, c, num_top) if req.logprobs else None))
    usage = _usage(num_prompt_tokens, sum(len(c.token_ids) for c in latest.values()))
    return ChatCompletionResponse(id=head.id, model=head.model, choices=choices, usage=usage,
                                  prompt_logprobs=prompt_logprobs)


def _response_role(serving: Serving, req: ChatCompletionRequest) -> str:
    """The answer's role, as vLLM's: --response-role ("assistant") after the template's generation prompt,
    else the last message's role (the model goes on with that message)."""
    return serving.response_role if req.add_generation_prompt else req.messages[-1].role


def _echo_text(req: ChatCompletionRequest, role: str) -> str:
    """vLLM's `echo`: the text the answer starts with, the last message's when it has the answer's role
    (as with continue_final_message); else ""."""
    last = req.messages[-1]
    if not req.echo or last.role != role:
        return ""
    return message_text(last.content) or ""        # its parts were checked when the prompt was rendered


def _answer_parsers(serving: Serving, req: ChatCompletionRequest, prompt: list[int],
                    tool_parser: ToolCallParser | None) -> AnswerParsers:
    """The server's reasoning parser, but none for a structured choice: the choice starts at the first
    token (the model does not think first; vLLM lets it, then applies the choice), so it is all content;
    with it, whether the prompt's end opened or closed a think block (vLLM's prompt_is_reasoning_end)."""
    if serving.reasoning_parser is None or req.structured_outputs is not None or req.guided_choice is not None:
        return AnswerParsers(tools=tool_parser)
    tail = serving.tokenizer.decode(prompt[-PROMPT_TAIL_TOKENS:])
    return AnswerParsers(serving.reasoning_parser, prompt_think_state(tail), tool_parser)


def _message(parsers: AnswerParsers, text: str) -> ChatResponseMessage:
    """The answer's message: all content, or with a reasoning parser its thinking apart, and with a
    tool parser the tool calls out of the content (finish_reason "tool_calls" where there are any)."""
    reasoning, content = None, text
    if parsers.reasoning is not None:
        split = split_reasoning(parsers.reasoning, text, prompt_state=parsers.prompt_state)
        reasoning, content = split.reasoning or None, split.content
    calls = []
    if parsers.tools is not None:
        content, calls = tool_call_messages(parsers.tools.extract(content))
    return ChatResponseMessage(content=content, reasoning_content=reasoning, tool_calls=calls)


class _ChoiceStream:
    """One streamed choice's message: this step's new text (`text_delta`: a DELTA output's text, or what a
    cumulative one added), with a reasoning parser split into thinking and content, and with a tool parser
    the content's tool calls apart (what may be a call waits); the parsers read only the new text."""

    def __init__(self, parsers: AnswerParsers) -> None:
        self.reasoning = ReasoningStream(parsers.reasoning, parsers.prompt_state) if parsers.reasoning else None
        self.tools = parsers.tools.stream() if parsers.tools is not None else None

    def delta(self, comp: CompletionOutput) -> DeltaMessage:
        if self.reasoning is None and self.tools is None:
            return DeltaMessage(content=comp.text_delta)
        reasoning, content, calls = "", comp.text_delta, []
        if self.reasoning is not None:
            split = self.reasoning.feed(comp.text_delta, comp.finished())
            reasoning, content = split.reasoning, split.content
        if self.tools is not None:      # the content's new text (with a reasoning parser: of its content)
            content, calls = self.tools.feed(content, comp.finished())
        return DeltaMessage(content=content or None, reasoning_content=reasoning or None, tool_calls=calls or None)

    def finish_reason(self, comp: CompletionOutput) -> str | None:
        return "tool_calls" if self.tools is not None and self.tools.num_calls else comp.finish_reason


def _usage(num_prompt_tokens: int, completion_tokens: int) -> UsageInfo:
    """The usage of a prompt and `completion_tokens` (all choices' for a response; one's for vLLM's per-chunk
    usage)."""
    return UsageInfo(prompt_tokens=num_prompt_tokens, completion_tokens=completion_tokens,
                     total_tokens=num_prompt_tokens + completion_tokens)


async def _stream(serving, req, head, streams, num_prompt_tokens, num_top, timer,
                  parsers: AnswerParsers) -> AsyncIterator[str]:
    """The SSE chunks of DELTA outputs: each choice's role, its deltas and its finish; with continuous usage
    stats each carries its choice's usage so far (as vLLM's), and with include_usage a last usage-only chunk
    (all choices' tokens)."""
    include_usage, continuous_usage = stream_usage(req.stream_options)
    num_tokens: dict[int, int] = {}         # per choice, its tokens so far

    def chunk(index: int, delta: DeltaMessage, logprobs=None, finish_reason=None, stop_reason=None) -> str:
        choice = ChatStreamChoice(index=index, delta=delta, logprobs=logprobs, finish_reason=finish_reason,
                                  stop_reason=stop_reason)
        usage = _usage(num_prompt_tokens, num_tokens.get(index, 0)) if continuous_usage else None
        return sse(ChatCompletionChunk(id=head.id, model=head.model, choices=[choice], usage=usage))

    done: set[int] = set()      # choices whose finish went out (a group's later outputs still carry them)
    choice_streams = {index: _ChoiceStream(parsers) for index in range(req.n)}
    role = _response_role(serving, req)
    echo = _echo_text(req, role)
    for index in range(req.n):
        yield chunk(index, DeltaMessage(role=role, content=""))
    for index in range(req.n if echo else 0):
        yield chunk(index, DeltaMessage(content=echo))
    async for _, out in merge(streams):
        timer.on_output(out)
        for comp in out.outputs:
            if comp.index in done:
                continue
            num_tokens[comp.index] = num_tokens.get(comp.index, 0) + len(comp.token_ids)
            delta = choice_streams[comp.index].delta(comp)
            if delta.content or delta.reasoning_content or delta.tool_calls or (req.logprobs and comp.token_ids):
                logprobs = _logprobs(serving, req, comp, num_top) if req.logprobs else None
                yield chunk(comp.index, delta, logprobs)
            if comp.finished():
                done.add(comp.index)
                yield chunk(comp.index, DeltaMessage(), finish_reason=choice_streams[comp.index].finish_reason(comp),
                            stop_reason=comp.stop_reason)
    timer.finish()
    if include_usage:
        yield sse(ChatCompletionChunk(id=head.id, model=head.model, choices=[],
                                      usage=_usage(num_prompt_tokens, sum(num_tokens.values()))))
