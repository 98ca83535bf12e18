"""The `llama3_json` tool-call format (vLLM's `--tool-call-parser llama3_json`, the one Llama 3.1, 3.2
and 3.3 Instruct write with their JSON tool-calling template): an answer that is tool calls.

The model answers a call as a JSON object `{"name": ..., "parameters": {...}}` ("arguments" is taken
too, first), optionally after the `<|python_tag|>` token's text, and several calls separated by `; `.
As vLLM's Llama3JsonToolParser, an answer is calls only when its first text (after leading whitespace)
is `<|python_tag|>` or `{`; then the JSON values are read one after the other (`raw_decode`, skipping
`;` and whitespace around them) and every one must be an object with a string "name" (missing
arguments are {}). Whole text (`extract_tool_calls`): the calls, with empty content (the answer is only
calls); anything else (text first, JSON that does not parse, a value that is not such an object, no
value at all) is no calls and the whole text unchanged as content.

A stream (`Llama3JsonStream`, simpler than vLLM's partial-JSON streaming) sends nothing while the text
so far may still become calls (only whitespace, a beginning of `<|python_tag|>`, or a start with it or
`{`); once it cannot, content flows as it comes. At the end it sends the calls, each whole in one delta,
or the held text as content where they do not parse: its deltas add up to `extract_tool_calls`.
"""
from __future__ import annotations

import json

from server.protocol_tools import FunctionCall
from server.tool_calls import ToolCallParser, ToolCallSplit, ToolCallStream, function_call

PYTHON_TAG = "<|python_tag|>"
SEPARATORS = "; \t\r\n"
_DECODER = json.JSONDecoder()


def _may_be_calls(text: str) -> bool:
    """Whether `text` is, or may still grow into, an answer that starts as calls do."""
    body = text.lstrip()
    return body.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(body)


def _parse_calls(text: str) -> list[FunctionCall]:
    """The calls `text` is made of, or [] where it is not only calls (see the module's rules)."""
    body = text.lstrip()
    if body.startswith(PYTHON_TAG):
        body = body[len(PYTHON_TAG):]
    elif not body.startswith("{"):
        return []
    calls, pos = [], 0
    while True:
        while pos < len(body) and body[pos] in SEPARATORS:
            pos += 1
        if pos == len(body):
            return calls
        try:
            obj, pos = _DECODER.raw_decode(body, pos)
        except (ValueError, RecursionError):
            return []
        call = function_call(obj, ("arguments", "parameters"))
        if call is None:
            return []
        calls.append(call)


def extract_tool_calls(text: str) -> ToolCallSplit:
    """The calls of an answer's whole text with empty content, or no calls and the text unchanged."""
    calls = _parse_calls(text)
    return ToolCallSplit("", calls) if calls else ToolCallSplit(text, [])


class Llama3JsonStream(ToolCallStream):
    """One choice's streamed llama3_json parse: held back while it may be calls, decided at the end."""

    def settled(self, text: str, final: bool) -> ToolCallSplit:
        if final:
            return extract_tool_calls(text)
        return ToolCallSplit("" if _may_be_calls(text) else text, [])


LLAMA3_JSON = ToolCallParser(extract_tool_calls, Llama3JsonStream)
