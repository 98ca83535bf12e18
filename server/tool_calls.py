"""The `hermes` tool-call format (vLLM's `--tool-call-parser hermes`, the one Qwen2.5 and Qwen3 write):
an answer's tool calls apart from its content.

The model writes each call as a block `<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`.
A block's JSON becomes a call whose `arguments` is a JSON string (OpenAI's shape); the text outside
the blocks is the content, stripped of the whitespace at its ends (the separators the model writes
around its calls) — except leading whitespace before text that comes ahead of the first call, which a
stream has sent by the time the call shows. Whole text (`extract_tool_calls`):

- no complete block: no calls, the text unchanged;
- a block whose JSON does not parse, is not an object or lacks a string "name": no calls, the whole
  text as content (as vLLM does);
- a block left open at the end (the output was cut short) is content.

A stream (`ToolCallStream`) reads the cumulative text at each step: content flows until a block
starts, a tail that may be the start of `<tool_call>` (or whitespace that may turn out to sit next
to one) waits, and each block is sent whole as one call when its `</tool_call>` arrives. Its deltas add
up to `extract_tool_calls` of the whole text, except where a bad block follows a call already sent:
that call stays sent, and the bad block and all after it flow as content.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from server.protocol import DeltaFunctionCall, DeltaToolCall, FunctionCall, ToolCall, tool_call_id
from server.reasoning import partial_tag_len

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"
TOOL_CALL_PARSERS = ("hermes",)


@dataclass(frozen=True)
class ToolCallSplit:
    content: str
    calls: list[FunctionCall]


def _parse_block(body: str) -> FunctionCall | None:
    """The call a block's text describes, or None when it is not a JSON object with a string "name";
    missing arguments are {}, arguments written as a string are kept as they are."""
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    if not isinstance(obj, dict) or not isinstance(obj.get("name"), str):
        return None
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, str):
        arguments = json.dumps(arguments, ensure_ascii=False)
    return FunctionCall(name=obj["name"], arguments=arguments)


def _scan(text: str, final: bool) -> tuple[ToolCallSplit, bool]:
    """The split of `text` read left to right, and whether a bad block ended the parsing (the bad block
    and all after it are then content as written). With final=False what may still change is left
    out: an open block, a tail that may start a tag, and trailing whitespace."""
    pieces, calls, pos, bad = [], [], 0, False
    while (start := text.find(TOOL_CALL_START, pos)) >= 0:
        end = text.find(TOOL_CALL_END, start + len(TOOL_CALL_START))
        if end < 0:
            break                                   # an open block: content, or held back below
        call = _parse_block(text[start + len(TOOL_CALL_START):end])
        if call is None:
            bad = True
            break
        pieces.append(text[pos:start])
        calls.append(call)
        pos = end + len(TOOL_CALL_END)
    tail = text[pos:]
    if not (bad or final):
        open_at = tail.find(TOOL_CALL_START)
        tail = tail[:open_at] if open_at >= 0 else tail[:len(tail) - partial_tag_len(tail, TOOL_CALL_START)]
    content = "".join(pieces) + tail
    if calls and not pieces[0].strip():
        content = content.lstrip()                  # nothing but whitespace came before the first call
    if not bad and (calls or not final):
        content = content.rstrip()                  # streaming: it may yet sit next to a call
    return ToolCallSplit(content, calls), bad


def extract_tool_calls(text: str) -> ToolCallSplit:
    """The calls and content of an answer's whole text (see the module's rules): no calls and the text
    unchanged unless every complete block parses."""
    split, bad = _scan(text, final=True)
    return ToolCallSplit(text, []) if bad or not split.calls else split


def tool_call_messages(split: ToolCallSplit) -> tuple[str | None, list[ToolCall]]:
    """A split as a response message's (content, tool_calls): with calls, empty content is None."""
    if not split.calls:
        return split.content, []
    return split.content or None, [ToolCall(function=call) for call in split.calls]


class ToolCallStream:
    """One choice's streamed parse: `update(text, final)` takes the cumulative text (the content part,
    with a reasoning parser) and returns the content not sent yet and the calls completed since."""

    def __init__(self) -> None:
        self.num_content = 0
        self.num_calls = 0

    def update(self, text: str, final: bool) -> tuple[str, list[DeltaToolCall]]:
        split, _ = _scan(text, final)
        content = split.content[self.num_content:]
        calls = [DeltaToolCall(index=i, id=tool_call_id(), type="function",
                               function=DeltaFunctionCall(name=call.name, arguments=call.arguments))
                 for i, call in enumerate(split.calls[self.num_calls:], start=self.num_calls)]
        self.num_content, self.num_calls = len(split.content), len(split.calls)
        return content, calls
