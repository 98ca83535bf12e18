"""The streamed answer parsers (reasoning, hermes, llama3_json, and both as the chat route combines them) do
work per step in proportion to the step's new text, not to the whole answer: a 32k-token thinking answer
streamed a token at a time must not cost O(n^2) server CPU.

Deterministic, no timing: the new texts fed to a stream are CountingStr, a str whose scanning and
copying methods (find, startswith, slicing, concatenation, strip, ...) add the characters they touch to a
counter, and whose results count too (a `"".join` of them does not: the streams join a block or the held
answer once). Doubling the answer may at most about double the count (linear); re-reading the whole
text every step quadruples it (the parsers before this test: 1.0e8 characters for qwen3 at n=1500).
"""
from __future__ import annotations

import json

import pytest

from engine.outputs import CompletionOutput
from server.reasoning import ReasoningStream
from server.serving_chat import AnswerParsers, _ChoiceStream
from server.tool_parser_hermes import HERMES
from server.tool_parser_llama3_json import LLAMA3_JSON


class Counter:
    total = 0


def _span(length: int, start, end) -> int:
    return len(range(length)[slice(start, end)])


class CountingStr(str):
    """A str whose methods that scan or copy characters add how many they touch to `counter.total`."""

    def __new__(cls, value: str, counter: Counter):
        obj = super().__new__(cls, value)
        obj.counter = counter
        return obj

    def _out(self, value, cost: int):
        self.counter.total += cost
        return CountingStr(value, self.counter) if isinstance(value, str) else value

    def __getitem__(self, key):
        value = str.__getitem__(self, key)
        return self._out(value, len(value))

    def __add__(self, other):
        value = str.__add__(self, other)
        return self._out(value, len(value))

    def __radd__(self, other):
        value = str.__add__(other, self)
        return self._out(value, len(value))

    def __contains__(self, sub):
        return self._out(str.__contains__(self, sub), len(self))

    def find(self, sub, start=None, end=None):
        return self._out(str.find(self, sub, start, end), _span(len(self), start, end))

    def rfind(self, sub, start=None, end=None):
        return self._out(str.rfind(self, sub, start, end), _span(len(self), start, end))

    def index(self, sub, start=None, end=None):
        return self._out(str.index(self, sub, start, end), _span(len(self), start, end))

    def startswith(self, prefix, *args):
        longest = max(map(len, prefix)) if isinstance(prefix, tuple) else len(prefix)
        return self._out(str.startswith(self, prefix, *args), longest)

    def endswith(self, suffix, *args):
        longest = max(map(len, suffix)) if isinstance(suffix, tuple) else len(suffix)
        return self._out(str.endswith(self, suffix, *args), longest)

    def strip(self, chars=None):
        return self._out(str.strip(self, chars), len(self))

    def lstrip(self, chars=None):
        return self._out(str.lstrip(self, chars), len(self))

    def rstrip(self, chars=None):
        return self._out(str.rstrip(self, chars), len(self))

    def split(self, *args):
        return self._out(str.split(self, *args), len(self))

    def partition(self, sep):
        return self._out(str.partition(self, sep), len(self))

    def isspace(self):
        return self._out(str.isspace(self), len(self))


def filler(n: int) -> str:
    """n characters of words, spaces and newlines (no tag characters)."""
    words = "the model thinks about the question\nand then\n\nit answers "
    return (words * (n // len(words) + 1))[:n]


def hermes_answer(n: int) -> str:
    """A thinking answer: n characters of thought, n of content, a call whose arguments are n long."""
    call = json.dumps({"name": "write", "arguments": {"text": filler(n)}})
    return f"<think>{filler(n)}</think>\n\n{filler(n)}\n<tool_call>\n{call}\n</tool_call>\n{filler(n)}"


def llama3_answer(n: int) -> str:
    return json.dumps({"name": "write", "parameters": {"text": filler(3 * n)}})


def scanned(feed, text: str, step: int = 1) -> int:
    """The characters the stream touches while `feed(new_text, final)` gets `text` `step` at a time."""
    counter = Counter()
    cuts = list(range(step, len(text), step)) + [len(text)]
    for start, cut in zip([0, *cuts], cuts):
        feed(CountingStr(text[start:cut], counter), cut == len(text))
    return counter.total


def assert_linear(make_feed, make_text, n: int = 1500) -> None:
    """Doubling the answer at most about doubles the characters touched (a whole re-read per step: x4)."""
    small, large = scanned(make_feed(), make_text(n)), scanned(make_feed(), make_text(2 * n))
    assert large <= 2.5 * small, (small, large)
    assert large <= 64 * len(make_text(2 * n)), large       # a bounded number of touches per character


@pytest.mark.parametrize("parser", ["qwen3", "deepseek_r1"])
def test_reasoning_stream_touches_each_character_a_bounded_number_of_times(parser):
    assert_linear(lambda: ReasoningStream(parser).feed, hermes_answer)


@pytest.mark.parametrize("tools, make_text", [(HERMES, hermes_answer), (LLAMA3_JSON, llama3_answer),
                                              (LLAMA3_JSON, hermes_answer)],
                         ids=["hermes", "llama3_json-calls", "llama3_json-text"])
def test_tool_call_streams_touch_each_character_a_bounded_number_of_times(tools, make_text):
    assert_linear(lambda: tools.stream().feed, make_text)


def choice_feed(parsers: AnswerParsers):
    """The chat route's per-choice stream, fed DELTA CompletionOutputs as the engine sends them."""
    stream = _ChoiceStream(parsers)

    def feed(delta: str, final: bool) -> None:
        stream.delta(CompletionOutput(index=0, text=delta, token_ids=[], text_delta=delta,
                                      finish_reason="stop" if final else None))
    return feed


@pytest.mark.parametrize("reasoning, tools, make_text", [
    ("qwen3", HERMES, hermes_answer), ("deepseek_r1", HERMES, hermes_answer),
    ("qwen3", LLAMA3_JSON, hermes_answer), ("qwen3", None, hermes_answer), (None, HERMES, hermes_answer)],
    ids=["qwen3-hermes", "deepseek_r1-hermes", "qwen3-llama3_json", "qwen3", "hermes"])
def test_chat_choice_stream_touches_each_character_a_bounded_number_of_times(reasoning, tools, make_text):
    assert_linear(lambda: choice_feed(AnswerParsers(reasoning, None, tools)), make_text)
