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

A stream (`HermesStream`) reads each step's new text once (its work is in that text, a held tail
shorter than a tag and, once per block, the block): content flows until a block starts, a tail that
may be the start of `<tool_call>` (or whitespace that may turn out to sit next to one) waits, and each
block is sent whole as one call when its `</tool_call>` arrives. Its deltas add up to
`extract_tool_calls` of the whole text, except where a bad block follows a call already sent: that
call stays sent, and the bad block and all after it flow as content.

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
    out: an open block, a tail that may start a tag, and trailing whitespace (a HermesStream's deltas
    are the growth of this split of the cumulative text)."""
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


class _Content:
    """The content a hermes stream settles, as `_scan` reads it: the text outside the blocks, its trailing
    whitespace waiting (`pending`) until text follows it (it may sit next to a call), and, where a call
    came with only whitespace before it, the content's leading whitespace dropped."""

    def __init__(self) -> None:
        self.out: list[str] = []        # settled, not taken yet
        self.pending: list[str] = []    # trailing whitespace
        self.seen_text = False          # a character other than whitespace came
        self.after_call = False         # a call was read

    def add(self, piece: str) -> None:
        if not self.seen_text:
            body = piece.lstrip()
            if not body:
                if not self.after_call:
                    self.pending.append(piece)
                return
            piece, self.seen_text = body if self.after_call else piece, True
        body = piece.rstrip()
        if body:
            self.out += self.pending
            self.pending.clear()
            self.out.append(body)
        if len(body) < len(piece):
            self.pending.append(piece[len(body):])

    def on_call(self) -> None:
        """A call was read: whitespace alone before it is no content."""
        if not self.seen_text:
            self.pending.clear()
        self.after_call = True

    def take(self, flush: bool) -> str:
        """The content settled since the last take; flush: the waiting whitespace too."""
        if flush:
            self.out += self.pending
            self.pending.clear()
        text = "".join(self.out)
        self.out.clear()
        return text


class HermesStream(ToolCallStream):
    """One choice's streamed hermes parse (see the module's rules), reading each step's new text once:
    outside a block it looks for `<tool_call>` in the new text and a held tail that may be its start;
    inside one it keeps the block's pieces and looks for `</tool_call>` in the new text and the block's
    last characters; a block is joined and parsed once, when it closes. Its deltas at each step are the
    growth of `_scan` of the cumulative text."""

    def __init__(self) -> None:
        super().__init__()
        self.content = _Content()
        self.held = ""                          # outside a block: a tail that may start `<tool_call>`
        self.block: list[str] | None = None     # inside a block: its text so far (after `<tool_call>`)
        self.block_tail = ""                    # the block's last characters, where `</tool_call>` may start
        self.bad = False                        # a bad block was read: all after it is content as written

    def read(self, delta: str, final: bool) -> tuple[str, list[FunctionCall]]:
        calls: list[FunctionCall] = []
        text = delta
        while text is not None:
            text = self._in_block(text, calls) if self.block is not None else self._outside(text, final)
        if final and self.block is not None:    # a block left open at the end is content
            self.content.add(TOOL_CALL_START + "".join(self.block))
            self.block = None
        flush = self.bad or (final and not self.content.after_call)     # else trailing whitespace waits
        return self.content.take(flush), calls

    def _outside(self, text: str, final: bool) -> str | None:
        """Content up to a `<tool_call>` (returns the text after it, the block's), or up to a tail that
        may start one (held; None)."""
        text, self.held = self.held + text, ""
        at = -1 if self.bad else text.find(TOOL_CALL_START)
        if at >= 0:
            self.content.add(text[:at])
            self.block, self.block_tail = [], ""
            return text[at + len(TOOL_CALL_START):]
        hold = 0 if final or self.bad else partial_tag_len(text, TOOL_CALL_START)
        self.content.add(text[:len(text) - hold])
        self.held = text[len(text) - hold:]
        return None

    def _in_block(self, text: str, calls: list[FunctionCall]) -> str | None:
        """The block's text up to `</tool_call>`: its call (returns the text after the tag), or, a bad
        block, all of it as content from now on; else kept (None)."""
        window = self.block_tail + text
        at = window.find(TOOL_CALL_END)
        if at < 0:
            self.block.append(text)
            self.block_tail = window[-(len(TOOL_CALL_END) - 1):]
            return None
        whole = "".join(self.block) + text
        end = len(whole) - len(window) + at
        self.block = None
        call = _parse_block(whole[:end])
        if call is None:
            self.bad = True
            return TOOL_CALL_START + whole
        calls.append(call)
        self.content.on_call()
        return whole[end + len(TOOL_CALL_END):]


HERMES = ToolCallParser(extract_tool_calls, HermesStream, keeps_special_tokens=True)
