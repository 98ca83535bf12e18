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
or the held text as content where they do not parse: its deltas add up to `extract_tool_calls`. Each
step reads only its new text (the answer's start decides), and the held answer is parsed once, at the end.
"""
from __future__ import annotations

import json

from server.protocol_tools import FunctionCall
from server.tool_calls import ToolCallParser, ToolCallSplit, ToolCallStream, function_call

PYTHON_TAG = "<|python_tag|>"
SEPARATORS = "; \t\r\n"
_DECODER = json.JSONDecoder()
UNDECIDED, CALLS, CONTENT = "undecided", "calls", "content"     # what a stream's answer is known to be


def _start_kind(head: str) -> str:
    """What an answer whose first text after leading whitespace begins with `head` is: CALLS where it
    starts as calls do (`{` or `<|python_tag|>`), UNDECIDED while `head` may still grow into the tag
    (empty too), else CONTENT."""
    if head.startswith(("{", PYTHON_TAG)):
        return CALLS
    return UNDECIDED if PYTHON_TAG.startswith(head) else CONTENT


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
    """One choice's streamed llama3_json parse: held back while it may be calls, decided at the end.
    Per step it reads the new text only: whether the answer can still be calls depends on its first
    characters after leading whitespace (`head`, at most the tag's length); held text is kept as pieces
    and parsed once, at the end."""

    def __init__(self) -> None:
        super().__init__()
        self.kind = UNDECIDED
        self.head = ""                  # the answer's first characters after its leading whitespace
        self.held: list[str] = []       # all the text so far, while it may be calls

    def read(self, delta: str, final: bool) -> tuple[str, list[FunctionCall]]:
        if self.kind == CONTENT:
            return delta, []
        self.held.append(delta)
        if self.kind == UNDECIDED:
            more = delta if self.head else delta.lstrip()
            self.head += more[:len(PYTHON_TAG) - len(self.head)]
            self.kind = _start_kind(self.head)
        if self.kind == CONTENT or final:
            text, self.held = "".join(self.held), []
            split = extract_tool_calls(text) if final else ToolCallSplit(text, [])
            return split.content, split.calls
        return "", []


LLAMA3_JSON = ToolCallParser(extract_tool_calls, Llama3JsonStream)
