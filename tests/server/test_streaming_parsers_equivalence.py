"""Property tests of the streamed answer parsers: random answers built from think tags, tool-call tags,
pieces of both, JSON calls (good, bad, nameless), `<|python_tag|>` and filler, cut into deltas at random
points (seeded; some one character at a time, some with steps that add no text).

- each stream's deltas are, step by step, what splitting each cumulative text whole gives (its growth,
  with what may still change held back): the whole-text oracles are the non-streaming functions;
- so the concatenated deltas equal the non-streaming result of the whole text (hermes: except a bad
  block after a call already sent, which the module documents);
- the chat route's per-choice stream (reasoning, then tool calls on the content) adds up to the
  non-streaming message, for every parser pair.
"""
from __future__ import annotations

import random

import pytest

from engine.outputs import CompletionOutput
from server.protocol_tools import FunctionCall
from server.reasoning import PROMPT_CLOSED, PROMPT_OPEN, ReasoningSplit, ReasoningStream, split_reasoning
from server.serving_chat import AnswerParsers, _ChoiceStream, _message
from server.tool_parser_hermes import HERMES, _scan
from server.tool_parser_llama3_json import LLAMA3_JSON, PYTHON_TAG, extract_tool_calls as llama3_extract

CALL = '<tool_call>\n{"name": "get_weather", "arguments": {"city": "Paris"}}\n</tool_call>'
PING = '<tool_call>{"name": "ping"}</tool_call>'
BAD = '<tool_call>\n{"name": "f", "arguments": {"city": \n</tool_call>'
NAMELESS = '<tool_call>{"arguments": {}}</tool_call>'
JSON_CALL = '{"name": "get_time", "parameters": {"zone": "CET"}}'
PIECES = ["<think>", "</think>", "<th", "</thi", "<", "</", ">", "think>", "<thinker>",
          "<tool_call>", "</tool_call>", "<tool_", "</tool_c", "_call>", CALL, PING, BAD, NAMELESS,
          JSON_CALL, "; ", PYTHON_TAG, PYTHON_TAG[:4], "{", "}", '{"name": ',
          "x", "Hello there.", " ", "  ", "\n", "\n\n", "\t", "é"]


def random_text(rng: random.Random) -> str:
    """Pieces at random, or half the time shaped as a thinking answer: thought, end tag, then the rest
    (often a call)."""
    def soup(most: int) -> str:
        return "".join(rng.choice(PIECES) for _ in range(rng.randint(0, most)))
    if rng.random() < 0.5:
        return soup(10)
    thought = rng.choice(["", "<think>", "\n<think>"]) + soup(4) + rng.choice(["</think>", "</think>\n\n", ""])
    return thought + soup(3) + rng.choice(["", CALL, PING, CALL + "\n" + PING, JSON_CALL]) + soup(3)


def random_cuts(rng: random.Random, text: str) -> list[int]:
    """Cumulative lengths, the last the whole text: one character at a time, or random points with
    repeats (steps that add no text, the final one too)."""
    if rng.random() < 0.25:
        return list(range(1, len(text) + 1)) or [0]
    cuts = sorted(rng.choice(range(len(text) + 1)) for _ in range(rng.randint(1, 8)))
    return cuts + [len(text)] * rng.randint(1, 2)


def cases(seed: int, count: int):
    rng = random.Random(seed)
    for _ in range(count):
        text = random_text(rng)
        yield text, random_cuts(rng, text)


def growth(before: str, after: str) -> str:
    """What `after` adds to `before` (which it must start with: nothing sent is taken back)."""
    assert after.startswith(before), (before, after)
    return after[len(before):]


@pytest.mark.parametrize("parser", ["qwen3", "deepseek_r1"])
@pytest.mark.parametrize("state", [None, PROMPT_OPEN, PROMPT_CLOSED])
def test_reasoning_deltas_are_the_growth_of_the_whole_text_split(parser, state):
    seed = 3 * ["qwen3", "deepseek_r1"].index(parser) + [None, PROMPT_OPEN, PROMPT_CLOSED].index(state)
    for text, cuts in cases(seed, count=400):
        stream, sent = ReasoningStream(parser, state), ReasoningSplit("", "")
        for i, (start, cut) in enumerate(zip([0, *cuts], cuts)):
            final = i == len(cuts) - 1
            whole = split_reasoning(parser, text[:cut], final, state)
            expected = ReasoningSplit(growth(sent.reasoning, whole.reasoning), growth(sent.content, whole.content))
            assert stream.feed(text[start:cut], final) == expected, (text, cuts, i)
            sent = whole
        assert sent == split_reasoning(parser, text, prompt_state=state)


def calls_of(deltas) -> list[FunctionCall]:
    return [FunctionCall(name=d.function.name, arguments=d.function.arguments) for d in deltas]


@pytest.mark.parametrize("seed", range(3))
def test_hermes_deltas_are_the_growth_of_the_whole_text_scan(seed):
    for text, cuts in cases(seed, count=400):
        stream, content, calls = HERMES.stream(), "", []
        for i, (start, cut) in enumerate(zip([0, *cuts], cuts)):
            final = i == len(cuts) - 1
            whole = _scan(text[:cut], final)[0]
            new_content, new_calls = stream.feed(text[start:cut], final)
            assert new_content == growth(content, whole.content), (text, cuts, i)
            assert [d.index for d in new_calls] == list(range(len(calls), len(whole.calls)))
            assert calls + calls_of(new_calls) == whole.calls, (text, cuts, i)
            content, calls = whole.content, whole.calls
        extracted = HERMES.extract(text)
        if not (calls and _scan(text, True)[1]):    # not a bad block after a sent call (the exception)
            assert (content, calls) == (extracted.content, extracted.calls), (text, cuts)


def llama3_settled(text: str, final: bool) -> tuple[str, list[FunctionCall]]:
    """The llama3_json stream's rule on a whole text: held while it may be calls, decided at the end."""
    if final:
        split = llama3_extract(text)
        return split.content, split.calls
    body = text.lstrip()
    may_be_calls = body.startswith(("{", PYTHON_TAG)) or PYTHON_TAG.startswith(body)
    return ("" if may_be_calls else text), []


@pytest.mark.parametrize("seed", range(3))
def test_llama3_json_deltas_are_the_growth_of_the_whole_text_rule(seed):
    rng = random.Random(seed)
    for text, cuts in cases(seed, count=400):
        if rng.random() < 0.3:                      # answers that are calls
            text = rng.choice(["", " ", PYTHON_TAG]) + "; ".join([JSON_CALL] * rng.randint(1, 3))
            cuts = random_cuts(rng, text)
        stream, content, num_calls = LLAMA3_JSON.stream(), "", 0
        for i, (start, cut) in enumerate(zip([0, *cuts], cuts)):
            final = i == len(cuts) - 1
            whole_content, whole_calls = llama3_settled(text[:cut], final)
            new_content, new_calls = stream.feed(text[start:cut], final)
            assert new_content == growth(content, whole_content), (text, cuts, i)
            assert calls_of(new_calls) == whole_calls[num_calls:], (text, cuts, i)
            content, num_calls = whole_content, len(whole_calls)
        assert (content, num_calls) == (llama3_extract(text).content, len(llama3_extract(text).calls))


def stream_choice(parsers: AnswerParsers, text: str, cuts: list[int]) -> tuple[str, str, list[FunctionCall], str]:
    """The chat route's per-choice stream fed `text` cut at `cuts`: its reasoning, content, calls and the
    finish reason."""
    stream, reasoning, content, calls, sent = _ChoiceStream(parsers), "", "", [], 0
    for i, cut in enumerate(cuts):
        final = i == len(cuts) - 1
        comp = CompletionOutput(index=0, text=text[:cut], token_ids=[], text_delta=text[sent:cut],
                                finish_reason="stop" if final else None)
        sent = cut
        delta = stream.delta(comp)
        reasoning += delta.reasoning_content or ""
        content += delta.content or ""
        calls += calls_of(delta.tool_calls or [])
    return reasoning, content, calls, stream.finish_reason(comp)


@pytest.mark.parametrize("reasoning", [None, "qwen3", "deepseek_r1"])
@pytest.mark.parametrize("tools", [None, HERMES, LLAMA3_JSON], ids=["no_tools", "hermes", "llama3_json"])
def test_chat_choice_stream_adds_up_to_the_whole_message(reasoning, tools):
    rng = random.Random(7)
    for text, cuts in cases(seed=11, count=300):
        state = rng.choice([None, PROMPT_OPEN, PROMPT_CLOSED]) if reasoning else None
        parsers = AnswerParsers(reasoning, state, tools)
        message = _message(parsers, text)
        tool_text = split_reasoning(reasoning, text, prompt_state=state).content if reasoning else text
        if tools is HERMES and _scan(tool_text, True)[1] and _scan(tool_text, True)[0].calls:
            continue            # a bad block after a sent call: the documented exception (see the hermes test)
        got = stream_choice(parsers, text, cuts)
        calls = [FunctionCall(name=c.function.name, arguments=c.function.arguments) for c in message.tool_calls]
        assert got[:3] == (message.reasoning_content or "", message.content or "", calls), (text, cuts, state)
        assert got[3] == ("tool_calls" if calls else "stop")


def test_the_generated_answers_cover_calls_and_thinking():
    """The random answers are not all trivial: many hold thinking then calls."""
    texts = [text for text, _ in cases(seed=11, count=300)]
    splits = [split_reasoning("qwen3", t) for t in texts]
    both = sum(bool(s.reasoning and HERMES.extract(s.content).calls) for s in splits)
    assert sum(bool(s.reasoning) for s in splits) > 60 and both > 20, both
