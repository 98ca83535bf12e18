"""The hermes tool-call parser alone: the calls and content of a whole text, and a stream of cumulative
texts whose deltas add up to that result."""
import json
import random

import pytest

from server.protocol_tools import FunctionCall
from server.tool_calls import ToolCallSplit, tool_call_messages
from server.tool_parser_hermes import HERMES, extract_tool_calls
from tool_parser_checks import assert_stream_equals_whole, random_cuts, run_stream


def block(name: str, **arguments) -> str:
    return f'<tool_call>\n{json.dumps({"name": name, "arguments": arguments})}\n</tool_call>'


WEATHER = block("get_weather", city="Paris")
TIME = block("get_time", zone="CET", precise=True)
BAD = '<tool_call>\n{"name": "get_weather", "arguments": {"city": \n</tool_call>'
NAMELESS = '<tool_call>\n{"arguments": {}}\n</tool_call>'


def calls(*pairs) -> list[FunctionCall]:
    return [FunctionCall(name=name, arguments=json.dumps(args)) for name, args in pairs]


@pytest.mark.parametrize("text, content, expected", [
    (WEATHER, "", calls(("get_weather", {"city": "Paris"}))),
    ("Let me check.\n" + WEATHER + "\n" + TIME + "\n", "Let me check.",
     calls(("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "precise": True}))),
    ("\n\n" + WEATHER + "\nThat is all.", "That is all.", calls(("get_weather", {"city": "Paris"}))),
    ("Before " + WEATHER + " between " + TIME + " after ", "Before  between  after",
     calls(("get_weather", {"city": "Paris"}), ("get_time", {"zone": "CET", "precise": True}))),
    ('<tool_call>{"name": "ping"}</tool_call>', "", calls(("ping", {}))),
    ('<tool_call>{"name": "f", "arguments": {"s": "é"}}</tool_call>', "", [FunctionCall(name="f", arguments='{"s": "é"}')]),
])
def test_whole_text_calls_and_the_content_around_them(text, content, expected):
    assert extract_tool_calls(text) == ToolCallSplit(content, expected)


@pytest.mark.parametrize("text", [
    "no calls here", "", "  spaced  ",
    "Let me check. " + BAD,                    # JSON that does not parse
    NAMELESS + "\n" + WEATHER,                  # a block without "name"
    WEATHER + "\n" + BAD,                      # one bad block: all text, no calls (as vLLM)
    "<tool_call>[1, 2]</tool_call>",           # not an object
    "cut short " + WEATHER[:30],              # a block left open
    "a </tool_call> b",                         # an end tag alone
])
def test_without_good_complete_blocks_the_text_is_content_unchanged(text):
    assert extract_tool_calls(text) == ToolCallSplit(text, [])


def test_a_block_left_open_after_a_call_is_content():
    text = WEATHER + "\n" + TIME[:20]
    assert extract_tool_calls(text) == ToolCallSplit(TIME[:20], calls(("get_weather", {"city": "Paris"})))


def test_the_response_shape_ids_and_none_content():
    content, tool_calls = tool_call_messages(extract_tool_calls(WEATHER + TIME))
    assert content is None and [c.function.name for c in tool_calls] == ["get_weather", "get_time"]
    assert all(c.type == "function" and c.id.startswith("call_") for c in tool_calls)
    assert len({c.id for c in tool_calls}) == 2
    assert json.loads(tool_calls[1].function.arguments) == {"zone": "CET", "precise": True}
    assert tool_call_messages(extract_tool_calls("plain")) == ("plain", [])


def test_a_stream_holds_back_tags_and_sends_each_call_whole_when_it_closes():
    text = "Checking.\n" + WEATHER + "\nDone."
    cuts = list(range(1, len(text) + 1))
    contents, deltas = run_stream(HERMES, text, cuts)
    assert all("<" not in c and ">" not in c for c in contents)
    assert "".join(contents) == "Checking.\n\nDone."
    (call,) = deltas
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    sent_at = next(i for i, c in enumerate(cuts) if text[:c].endswith("</tool_call>"))
    assert run_stream(HERMES, text, cuts[:sent_at + 1])[1] and not run_stream(HERMES, text, cuts[:sent_at])[1]


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_add_up_to_the_whole_text_result(seed):
    """Random texts of calls, text, whitespace and tag pieces (a bad block only where no good one came
    before it: the one case where a stream cannot match the whole text), cut at random points."""
    rng = random.Random(seed)
    good = [WEATHER, TIME, '<tool_call>{"name": "ping"}</tool_call>']
    pieces = ["Hi", " ", "\n", "\n\n", "<", "<tool", "</tool_call>", "ok.", "<tool_call", "x>"]
    for _ in range(400):
        parts = [rng.choice(pieces + good) for _ in range(rng.randint(0, 8))]
        if rng.random() < 0.2:
            parts.insert(rng.randint(0, len(parts)), rng.choice([BAD, NAMELESS]))
        text = "".join(parts)
        if any(g in text.split(BAD)[0].split(NAMELESS)[0] for g in good) and (BAD in text or NAMELESS in text):
            continue
        assert_stream_equals_whole(HERMES, text, random_cuts(rng, text))


def test_a_bad_block_after_a_sent_call_flows_as_content():
    """The stream cannot take back a call it sent: the bad block and what follows become content
    (the whole text would give no calls)."""
    text = WEATHER + "\n" + BAD + " tail"
    contents, deltas = run_stream(HERMES, text, [len(WEATHER) + 1, len(text) - 3, len(text)])
    assert [d.function.name for d in deltas] == ["get_weather"]
    assert "".join(contents) == BAD + " tail"
