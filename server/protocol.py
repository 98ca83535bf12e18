"""Pydantic models of the OpenAI-compatible API: requests, responses, stream chunks and errors (the
utility routes' models are in server/protocol_utility.py, the tool calls' in server/protocol_tools.py).

Requests check types and simple ranges here; the sampling rules themselves are checked once, by
SamplingParams, and its ValueError becomes a 400 as well (see serving.py).
"""
from __future__ import annotations

import time
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.protocol_tools import ChatCompletionToolsParam, DeltaToolCall, NamedToolChoice, ToolCall


class ErrorInfo(BaseModel):
    message: str
    type: str
    param: str | None = None
    code: int | str | None = None


class ErrorResponse(BaseModel):
    error: ErrorInfo


class StreamOptions(BaseModel):
    """`stream_options` (only with stream true, see request_fields.check_fields). include_usage: a last
    chunk with the usage; vLLM's continuous_usage_stats: usage on every chunk that carries choices too
    (see request_fields.stream_usage). Unknown keys are kept in `model_extra`, logged as ignored."""

    model_config = ConfigDict(extra="allow")

    include_usage: bool | None = None      # unset: as continuous_usage_stats (see request_fields.stream_usage)
    continuous_usage_stats: bool = False


class ResponseFormat(BaseModel):
    """`response_format`: {"type": "text"} is plain generation; "json_object" / "json_schema" (JSON mode,
    structured outputs) need a grammar engine, which this engine has not (400, see
    request_fields.check_fields)."""

    model_config = ConfigDict(extra="allow")

    type: str
    json_schema: dict[str, Any] | None = None


# vLLM's request extras for what this engine cannot do: guided decoding by a grammar; declared so that a
# request setting one (not null) is a 400 naming it (request_fields.check_fields). guided_choice and
# structured_outputs {"choice": [...]} are served (request_fields.structured_outputs);
# guided_decoding_backend is accepted and changes nothing.
GUIDED_DECODING_FIELDS = ("guided_json", "guided_regex", "guided_grammar")


class _SamplingFields(BaseModel):
    """Fields common to completions and chat completions (OpenAI names plus vLLM's extras). Unknown
    fields are kept in `model_extra` (as vLLM's extra="allow"), so the server can log them as ignored."""

    model_config = ConfigDict(extra="allow")

    model: str | None = None
    n: int = Field(1, ge=1, le=128)
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None
    min_p: float | None = None
    seed: int | None = None
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None
    repetition_penalty: float | None = None
    logit_bias: dict[str, float] | None = None
    allowed_token_ids: list[int] | None = None      # vLLM's extra: only these tokens may be sampled
    truncate_prompt_tokens: int | None = None       # vLLM's extra: the prompt's last k tokens (-1: max_model_len)
    bad_words: list[str] | None = None              # vLLM's extra: words never to generate
    ignore_eos: bool = False
    min_tokens: int = Field(0, ge=0)
    skip_special_tokens: bool = True
    include_stop_str_in_output: bool = False
    stream: bool = False
    stream_options: StreamOptions | None = None
    user: str | None = None
    response_format: ResponseFormat | None = None
    guided_json: Any = None
    guided_regex: Any = None
    guided_choice: Any = None
    guided_grammar: Any = None
    guided_decoding_backend: Any = None
    structured_outputs: Any = None
    prompt_logprobs: int | None = Field(None, ge=0)   # vLLM's extra: at most max_logprobs, not with stream
    priority: int = 0      # vLLM's extra: lower is scheduled earlier (--scheduling-policy priority; else 0)
    request_id: str | None = None   # vLLM's extra: names the response (cmpl- / chatcmpl-<id>) unless X-Request-Id does
    # vLLM's extra: logprobs name tokens "token_id:{id}" (None: as --return-tokens-as-token-ids says)
    return_tokens_as_token_ids: bool | None = None


class CompletionRequest(_SamplingFields):
    prompt: str | list[str] | list[int] | list[list[int]]
    max_tokens: int | None = Field(16, ge=0)        # 0: only with echo, the prompt alone (vLLM's)
    logprobs: int | None = Field(None, ge=0)         # at most the engine's max_logprobs
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None        # an assistant's calls (its content may be None)
    tool_call_id: str | None = None                 # role "tool": the call this message answers


class ChatCompletionRequest(_SamplingFields):
    messages: list[ChatMessage] = Field(min_length=1)
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(None, ge=0)     # at most the engine's max_logprobs
    chat_template_kwargs: dict[str, Any] | None = None
    add_generation_prompt: bool = True          # vLLM's extras: render the assistant's header, or else
    continue_final_message: bool = False        # leave the last (assistant) message open for the model
    echo: bool = False          # vLLM's extra: the answer starts with the last message's text if it has its role
    tools: list[ChatCompletionToolsParam] | None = None
    # None (left out): "auto" when tools are given, else "none" (OpenAI's default); see serving_chat
    tool_choice: Literal["none", "auto", "required"] | NamedToolChoice | None = None
    parallel_tool_calls: bool = True        # accepted, as vLLM does; every complete call is returned


class UsageInfo(BaseModel):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


class CompletionLogprobs(BaseModel):
    tokens: list[str] = Field(default_factory=list)
    token_logprobs: list[float | None] = Field(default_factory=list)
    top_logprobs: list[dict[str, float] | None] = Field(default_factory=list)
    text_offset: list[int] = Field(default_factory=list)


class Logprob(BaseModel):
    """vLLM's Logprob: one token of a prompt position (`prompt_logprobs`); rank 1 is the most likely."""

    logprob: float
    rank: int | None = None
    decoded_token: str | None = None


# vLLM's prompt_logprobs: one entry per prompt token, None for the first, token id -> Logprob
PromptLogprobs = list[dict[int, Logprob] | None]


class CompletionStreamChoice(BaseModel):
    index: int
    text: str
    logprobs: CompletionLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class CompletionChoice(CompletionStreamChoice):
    prompt_logprobs: PromptLogprobs | None = None       # vLLM's extra (not streamed)


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo | None = None


class CompletionStreamResponse(CompletionResponse):
    choices: list[CompletionStreamChoice]


class TopLogprob(BaseModel):
    token: str
    logprob: float
    bytes: list[int] | None = None


class TokenLogprob(TopLogprob):
    top_logprobs: list[TopLogprob] = Field(default_factory=list)


class ChatLogprobs(BaseModel):
    content: list[TokenLogprob] | None = None


class ChatResponseMessage(BaseModel):
    role: str = "assistant"
    content: str | None = None
    reasoning_content: str | None = None   # with --reasoning-parser: the text between <think> and </think>
    tool_calls: list[ToolCall] = Field(default_factory=list)   # with --tool-call-parser (vLLM: [] when none)


class ChatChoice(BaseModel):
    index: int
    message: ChatResponseMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    prompt_logprobs: PromptLogprobs | None = None       # vLLM's extra (not streamed)


class DeltaMessage(BaseModel):
    role: str | None = None
    content: str | None = None
    reasoning_content: str | None = None
    tool_calls: list[DeltaToolCall] | None = None


class ChatStreamChoice(BaseModel):
    index: int
    delta: DeltaMessage
    logprobs: ChatLogprobs | None = None
    finish_reason: str | None = None
    stop_reason: int | str | None = None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    created: int = Field(default_factory=lambda: int(time.time()))
    model: str
    choices: list[ChatStreamChoice]
    usage: UsageInfo | None = None
