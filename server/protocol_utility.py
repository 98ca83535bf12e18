"""Pydantic models of the utility routes: /v1/models, /tokenize and /detokenize."""
from __future__ import annotations

import time
from typing import Literal

from pydantic import BaseModel, Field

from server.protocol import ChatMessage
from server.protocol_tools import ChatCompletionToolsParam


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int = Field(default_factory=lambda: int(time.time()))
    owned_by: str = "engine"
    max_model_len: int | None = None


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]


class TokenizeRequest(BaseModel):
    model: str | None = None
    prompt: str | None = None
    messages: list[ChatMessage] | None = None
    tools: list[ChatCompletionToolsParam] | None = None     # with messages: rendered as chat requests do
    add_special_tokens: bool = True
    add_generation_prompt: bool = True
    continue_final_message: bool = False


class TokenizeResponse(BaseModel):
    tokens: list[int]
    count: int
    max_model_len: int


class DetokenizeRequest(BaseModel):
    model: str | None = None
    tokens: list[int]


class DetokenizeResponse(BaseModel):
    prompt: str
