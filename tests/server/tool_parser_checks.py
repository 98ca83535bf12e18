"""What the tool-call parser tests share: a parser's stream fed a text in pieces, and the check that a
stream's deltas add up to the parser's whole-text result."""
from __future__ import annotations

import random

from server.protocol_tools import FunctionCall
from server.tool_calls import ToolCallParser


def run_stream(parser: ToolCallParser, text: str, cuts: list[int]):
    """The parser's stream fed the text up to each cut, piece by piece (the last one final): content deltas,
    call deltas."""
    stream, contents, deltas = parser.stream(), [], []
    for i, (start, cut) in enumerate(zip([0, *cuts], cuts)):
        content, new = stream.feed(text[start:cut], final=i == len(cuts) - 1)
        contents.append(content)
        deltas.extend(new)
    return contents, deltas


def random_cuts(rng: random.Random, text: str) -> list[int]:
    """Up to 8 random cut points in `text`, ending with the whole text."""
    cuts = sorted(rng.sample(range(1, len(text) + 1), k=min(len(text), rng.randint(1, 8)))) if text else []
    return [c for c in cuts if c < len(text)] + [len(text)]


def assert_stream_equals_whole(parser: ToolCallParser, text: str, cuts: list[int]) -> None:
    contents, deltas = run_stream(parser, text, cuts)
    whole = parser.extract(text)
    assert "".join(contents) == whole.content, (text, cuts)
    assert [d.index for d in deltas] == list(range(len(deltas)))
    assert [FunctionCall(name=d.function.name, arguments=d.function.arguments) for d in deltas] == whole.calls
    assert all(d.id.startswith("call_") and d.type == "function" for d in deltas)
