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

A stream (`HermesStream`) reads the cumulative text at each step: content flows until a block
starts, a tail that may be the start of `<tool_call>` (or whitespace that may turn out to sit next
to one) waits, and each block is sent whole as one call when its `</tool_call>` arrives. Its deltas add
up to `extract_tool_calls` of the whole text, except where a bad block follows a call already sent:
that call stays sent, and the bad block and all after it flow as content.

As vLLM's, a request whose answer this parser reads is decoded with skip_special_tokens false: some
models (Hermes 2 Pro on Llama 3) write `<tool_call>` as a special token.
"""
from __future__ import annotations

import json

from server.protocol_tools import FunctionCall
from server.reasoning import partial_tag_len
from server.tool_calls import ToolCallParser, ToolCallSplit, ToolCallStream, function_call

TOOL_CALL_START, TOOL_CALL_END = "<tool_call>", "</tool_call>"


def _parse_block(body: str) -> FunctionCall | None:
    """The call a block's text describes, or None when it is not a JSON object with a string "name"."""
    try:
        return function_call(json.loads(body))
    except ValueError:
        return None


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


class HermesStream(ToolCallStream):
    """One choice's streamed hermes parse (see the module's rules)."""

    def settled(self, text: str, final: bool) -> ToolCallSplit:
        return _scan(text, final)[0]


HERMES = ToolCallParser(extract_tool_calls, HermesStream, keeps_special_tokens=True)
