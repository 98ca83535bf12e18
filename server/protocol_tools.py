"""Pydantic models of tool calls on the OpenAI-compatible API: the request's `tools` and `tool_choice`,
an answer's calls, and a stream's call deltas (server/tool_calls.py makes them from the parsers' output)."""
from __future__ import annotations

import uuid
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field


def tool_call_id() -> str:
    """A new tool call's id: "call_" and 32 hex digits."""
    return f"call_{uuid.uuid4().hex}"


class FunctionCall(BaseModel):
    """A call the model made: the function's name and its arguments as a JSON string (OpenAI's shape)."""

    name: str
    arguments: str


class ToolCall(BaseModel):
    """One tool call of an assistant message, in an answer or in a request's history."""

    id: str = Field(default_factory=tool_call_id)
    type: Literal["function"] = "function"
    function: FunctionCall


class FunctionDefinition(BaseModel):
    """A tool's function as the request describes it; other fields (e.g. strict) pass to the template too."""

    model_config = ConfigDict(extra="allow")

    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None


class ChatCompletionToolsParam(BaseModel):
    """One entry of `tools`: {"type": "function", "function": {...}}."""

    type: Literal["function"] = "function"
    function: FunctionDefinition


class NamedFunction(BaseModel):
    name: str


class NamedToolChoice(BaseModel):
    """`tool_choice` naming one function: {"type": "function", "function": {"name": ...}}."""

    type: Literal["function"] = "function"
    function: NamedFunction


class DeltaFunctionCall(BaseModel):
    name: str | None = None
    arguments: str | None = None


class DeltaToolCall(BaseModel):
    """A streamed tool call: `index` counts the choice's calls; here each is sent whole in one delta."""

    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: DeltaFunctionCall | None = None
