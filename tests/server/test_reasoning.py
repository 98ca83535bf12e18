"""Reasoning parsers: the split of a whole text, and a stream of deltas that adds up to that split."""
import random

import pytest

from server.reasoning import ReasoningSplit, ReasoningStream, split_reasoning


@pytest.mark.parametrize("parser, text, reasoning, content", [
    ("qwen3", "<think>\nplan</think>\n\nanswer", "\nplan", "\n\nanswer"),
    ("qwen3", "no thinking here", "", "no thinking here"),
    ("qwen3", "<think>\n\n</think>\n\nhi", "\n\n", "\n\nhi"),
    ("qwen3", "<think>cut short by max_tokens", "cut short by max_tokens", ""),
    ("qwen3", "pre <think>r</think>post", "r", "pre post"),
    ("qwen3", "a </think> b", "", "a </think> b"),           # an end tag without a start is content
    ("deepseek_r1", "thinking...</think>answer", "thinking...", "answer"),
    ("deepseek_r1", "<think>thinking</think>answer", "thinking", "answer"),
    ("deepseek_r1", "still thinking", "still thinking", ""),
])
def test_split_of_a_whole_text(parser, text, reasoning, content):
    assert split_reasoning(parser, text) == ReasoningSplit(reasoning, content)


def test_an_unknown_parser_is_refused_naming_the_choices():
    with pytest.raises(ValueError, match="qwen3"):
        split_reasoning("o1", "text")


def _stream(parser: str, text: str, cuts: list[int]) -> tuple[str, str, list[ReasoningSplit]]:
    stream, reasoning, content, deltas = ReasoningStream(parser), "", "", []
    for i, (start, cut) in enumerate(zip([0, *cuts], cuts)):
        delta = stream.feed(text[start:cut], final=i == len(cuts) - 1)
        reasoning, content = reasoning + delta.reasoning, content + delta.content
        deltas.append(delta)
    return reasoning, content, deltas


def test_a_tag_split_across_deltas_is_held_back_not_sent_as_text():
    text = "<think>ab</think>cd"
    _, _, deltas = _stream("qwen3", text, [3, 8, 12, 17, len(text)])
    assert deltas[0] == ReasoningSplit("", "")          # "<th": maybe a tag
    assert deltas[1] == ReasoningSplit("a", "")
    assert deltas[2] == ReasoningSplit("b", "")         # "ab</t": the "</t" waits
    assert deltas[3] == ReasoningSplit("", "")
    assert deltas[4] == ReasoningSplit("", "cd")


@pytest.mark.parametrize("parser", ["qwen3", "deepseek_r1"])
def test_random_streams_add_up_to_the_whole_split(parser):
    rng = random.Random(0)
    pieces = ["<think>", "</think>", "<", "</", "<th", "think>", "x", "yz", "\n", " ", "<thinker>", ">"]
    for _ in range(500):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 12)))
        cuts = sorted(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 6))))
        cuts = [c for c in cuts if c < len(text)] + [len(text)]
        reasoning, content, _ = _stream(parser, text, cuts)
        assert ReasoningSplit(reasoning, content) == split_reasoning(parser, text), (text, cuts)
