"""Reasoning parsers (vLLM's `--reasoning-parser`): a chat answer's thinking apart from its content.

Qwen3 and DeepSeek-R1 write their reasoning between `<think>` and `</think>`, then the answer. With a
parser the chat endpoint returns the reasoning in `reasoning_content` and the rest in `content`:

- `qwen3`: reasoning starts at a `<think>` in the output (text before it is content) and ends at
  `</think>`, or at the end of an output cut short (max_tokens). No `<think>`: all content (Qwen3 with
  `enable_thinking=False`, whose template puts the empty think block in the prompt).
- `deepseek_r1`: the template opens the think block in the prompt, so the output starts in reasoning
  (a `<think>` at its very start is dropped) until `</think>`.

The prompt's end can settle where the answer starts (vLLM's prompt_is_reasoning_end), whatever the
parser: a prompt ending in a closed think block (Qwen3's `enable_thinking=False` writes an empty one)
makes the answer all content; one ending in `<think>` (the template opened the block: Qwen3-Thinking-2507,
DeepSeek-R1) makes it start in reasoning, as `deepseek_r1` reads it.

A stream (ReasoningStream) reads only each step's new text: a small state machine (before the think
block, at an answer's start where a `<think>` may be dropped, in reasoning, after the block) scans the
new text and a held tail that could still become a tag (`</thi`), held back until the next text says
what it is, so nothing sent is ever taken back. Its deltas at each step are the growth of
`split_reasoning` of the cumulative text (final=False until the end), at a cost in the step's text.
"""
from __future__ import annotations

from dataclasses import dataclass

THINK_START, THINK_END = "<think>", "</think>"
REASONING_PARSERS = ("qwen3", "deepseek_r1")
PROMPT_OPEN, PROMPT_CLOSED = "open", "closed"       # what the prompt's end did to the think block


@dataclass(frozen=True)
class ReasoningSplit:
    reasoning: str
    content: str


def partial_tag_len(text: str, tag: str) -> int:
    """Length of the longest end of `text` that is a proper beginning of `tag` (0 when none)."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def prompt_think_state(prompt_tail: str) -> str | None:
    """PROMPT_CLOSED where the prompt's text ends with `</think>` (and whitespace), PROMPT_OPEN where it
    ends with `<think>`, else None. Only the end counts: tags in earlier turns say nothing."""
    tail = prompt_tail.rstrip()
    if tail.endswith(THINK_END):
        return PROMPT_CLOSED
    return PROMPT_OPEN if tail.endswith(THINK_START) else None


def split_reasoning(parser: str, text: str, final: bool = True, prompt_state: str | None = None) -> ReasoningSplit:
    """Split `text` (an output's whole text so far) into reasoning and content. With final=False a
    tail that may be the start of a tag is left out of both (streaming). prompt_state: what the
    prompt did to the think block (`prompt_think_state`)."""
    if parser not in REASONING_PARSERS:
        raise ValueError(f"reasoning parser must be one of {REASONING_PARSERS}, got {parser!r}")
    if prompt_state == PROMPT_CLOSED:
        return ReasoningSplit("", text)
    if parser == "qwen3" and prompt_state != PROMPT_OPEN:
        start = text.find(THINK_START)
        if start < 0:
            hold = 0 if final else partial_tag_len(text, THINK_START)
            return ReasoningSplit("", text[:len(text) - hold])
        before, rest = text[:start], text[start + len(THINK_START):]
    elif text.startswith(THINK_START):      # deepseek_r1 or an open block: only a leading <think> is a tag
        before, rest = "", text[len(THINK_START):]
    else:
        before, rest = "", "" if not final and THINK_START.startswith(text) else text
    end = rest.find(THINK_END)
    if end >= 0:
        return ReasoningSplit(rest[:end], before + rest[end + len(THINK_END):])
    hold = 0 if final else partial_tag_len(rest, THINK_END)
    return ReasoningSplit(rest[:len(rest) - hold], before)


SEEK, LEADING, REASONING, AFTER = "seek", "leading", "reasoning", "after"     # a stream's states


def _first_state(parser: str, prompt_state: str | None) -> str:
    """Where a stream starts, as split_reasoning reads a text: all content after a closed block; qwen3
    (no open block) looks for `<think>`; else the answer is reasoning, a leading `<think>` dropped."""
    if parser not in REASONING_PARSERS:
        raise ValueError(f"reasoning parser must be one of {REASONING_PARSERS}, got {parser!r}")
    if prompt_state == PROMPT_CLOSED:
        return AFTER
    return SEEK if parser == "qwen3" and prompt_state != PROMPT_OPEN else LEADING


class ReasoningStream:
    """One choice's streamed split: `feed(delta, final)` returns the (reasoning, content) text that the
    answer's new text `delta` settles. Each step scans the new text and a held tail shorter than a tag."""

    def __init__(self, parser: str, prompt_state: str | None = None) -> None:
        self.state = _first_state(parser, prompt_state)
        self.held = ""          # a tail that may be (the start of) a tag, or LEADING's whole text so far

    def feed(self, delta: str, final: bool) -> ReasoningSplit:
        text, self.held = self.held + delta, ""
        reasoning, content = [], []
        while text is not None:
            text = self._step(text, final, reasoning, content)
        return ReasoningSplit("".join(reasoning), "".join(content))

    def _step(self, text: str, final: bool, reasoning: list[str], content: list[str]) -> str | None:
        """Read `text` in the current state: what it settles goes to `reasoning` / `content`; returns
        the text after a tag that changed the state (read next), or None with the rest held."""
        if self.state == AFTER:
            content.append(text)
            return None
        if self.state == LEADING:
            if text.startswith(THINK_START):
                self.state = REASONING
                return text[len(THINK_START):]
            if not final and THINK_START.startswith(text):
                self.held = text
                return None
            self.state = REASONING
            return text
        tag, out = (THINK_START, content) if self.state == SEEK else (THINK_END, reasoning)
        at = text.find(tag)
        if at >= 0:
            out.append(text[:at])
            self.state = REASONING if self.state == SEEK else AFTER
            return text[at + len(tag):]
        hold = 0 if final else partial_tag_len(text, tag)
        out.append(text[:len(text) - hold])
        self.held = text[len(text) - hold:]
        return None
