"""The llama3_json tool-call parser alone (Llama 3.1 / 3.2 / 3.3 Instruct, as vLLM's Llama3JsonToolParser):
an answer that starts with `{` or `<|python_tag|>` and is only JSON calls separated by `; ` is calls,
anything else is content unchanged; the stream holds back what may be calls until the end."""
import json
import random

import pytest

from server.protocol_tools import FunctionCall
from server.tool_calls import ToolCallSplit, tool_call_messages
from server.tool_parser_llama3_json import LLAMA3_JSON, PYTHON_TAG, extract_tool_calls
from tool_parser_checks import assert_stream_equals_whole, random_cuts, run_stream

WEATHER = '{"name": "get_weather", "parameters": {"city": "Paris"}}'
TIME = '{"name": "get_time", "parameters": {"zone": "CET", "precise": true}}'
WEATHER_CALL = FunctionCall(name="get_weather", arguments='{"city": "Paris"}')
TIME_CALL = FunctionCall(name="get_time", arguments='{"zone": "CET", "precise": true}')


@pytest.mark.parametrize("text, expected", [
    (WEATHER, [WEATHER_CALL]),
    (WEATHER + "; " + TIME, [WEATHER_CALL, TIME_CALL]),
    (PYTHON_TAG + WEATHER, [WEATHER_CALL]),
    (PYTHON_TAG + WEATHER + ";" + TIME, [WEATHER_CALL, TIME_CALL]),
    ("\n  " + PYTHON_TAG + " " + WEATHER + " ;\n" + TIME + "\n", [WEATHER_CALL, TIME_CALL]),
    ('{"name": "get_weather", "arguments": {"city": "Paris"}}', [WEATHER_CALL]),
    ('{"name": "f", "arguments": {"a": 1}, "parameters": {"b": 2}}', [FunctionCall(name="f", arguments='{"a": 1}')]),
    ('{"name": "ping"}', [FunctionCall(name="ping", arguments="{}")]),
    ('{"name": "f", "parameters": {"s": "é"}}', [FunctionCall(name="f", arguments='{"s": "é"}')]),
])
def test_an_answer_of_json_calls_is_calls_with_empty_content(text, expected):
    assert extract_tool_calls(text) == ToolCallSplit("", expected)


@pytest.mark.parametrize("text", [
    "", "   ", "no calls here", PYTHON_TAG, PYTHON_TAG[:5], "{",
    "Let me check. " + WEATHER,                         # text first
    '{"name": "get_weather", "parameters": {"city": ',  # JSON that does not parse (cut short)
    WEATHER + "; " + TIME[:-1],                        # the second call does not parse
    WEATHER + " and then " + TIME,                     # text between the calls
    WEATHER + " done.",                                 # text after the call
    '{"parameters": {}}',                              # no "name"
    '{"name": 3, "parameters": {}}',                   # a name that is not a string
    WEATHER + "; [1, 2]",                              # a value that is not an object
    "[" + WEATHER + "]",                               # a list does not start as calls do
])
def test_anything_else_is_content_unchanged(text):
    assert extract_tool_calls(text) == ToolCallSplit(text, [])


def test_the_response_shape_ids_and_none_content():
    content, tool_calls = tool_call_messages(extract_tool_calls(PYTHON_TAG + WEATHER + "; " + TIME))
    assert content is None and [c.function.name for c in tool_calls] == ["get_weather", "get_time"]
    assert all(c.type == "function" and c.id.startswith("call_") for c in tool_calls)
    assert len({c.id for c in tool_calls}) == 2
    assert json.loads(tool_calls[1].function.arguments) == {"zone": "CET", "precise": True}


def test_a_stream_starting_with_a_brace_holds_everything_back_until_the_end():
    text = WEATHER + "; " + TIME
    cuts = list(range(1, len(text) + 1))
    contents, deltas = run_stream(LLAMA3_JSON, text, cuts)
    assert contents == [""] * len(cuts)
    assert [(d.index, d.function.name) for d in deltas] == [(0, "get_weather"), (1, "get_time")]
    assert json.loads(deltas[0].function.arguments) == {"city": "Paris"}
    stream = LLAMA3_JSON.stream()
    assert stream.feed(text, final=False) == ("", [])       # whole calls, but not final yet: nothing
    content, calls = stream.feed("", final=True)
    assert content == "" and [c.function.name for c in calls] == ["get_weather", "get_time"]


def test_a_stream_of_text_flows_once_it_cannot_be_calls():
    text = "  " + PYTHON_TAG[:4] + "x and more"
    contents, deltas = run_stream(LLAMA3_JSON, text, list(range(1, len(text) + 1)))
    first = next(i for i, c in enumerate(contents) if c)
    assert first == len("  " + PYTHON_TAG[:4] + "x") - 1 and contents[first] == "  " + PYTHON_TAG[:4] + "x"
    assert all(len(c) == 1 for c in contents[first + 1:]) and not deltas


def test_a_held_answer_that_does_not_parse_comes_out_as_content_at_the_end():
    text = PYTHON_TAG + WEATHER[:-1] + " (cut short)"
    contents, deltas = run_stream(LLAMA3_JSON, text, list(range(1, len(text) + 1)))
    assert contents[:-1] == [""] * (len(text) - 1) and contents[-1] == text and not deltas


@pytest.mark.parametrize("seed", range(4))
def test_random_streams_add_up_to_the_whole_text_result(seed):
    """Random answers of calls, separators, tag pieces, text and broken JSON, cut at random points."""
    rng = random.Random(seed)
    calls = [WEATHER, TIME, '{"name": "ping"}']
    pieces = ["; ", ";", " ", "\n", PYTHON_TAG, PYTHON_TAG[:3], "{", "}", "Hi", '{"name": ', '"x"}', "[1]"]
    num_with_calls = 0
    for _ in range(400):
        parts = [rng.choice(calls + pieces) for _ in range(rng.randint(0, 6))]
        if rng.random() < 0.5:                          # calls only: most of these parse
            parts = [rng.choice(calls) + rng.choice(["; ", ";", " ", ""]) for _ in range(rng.randint(1, 3))]
            parts.insert(0, rng.choice(["", " ", PYTHON_TAG]))
        text = "".join(parts)
        num_with_calls += bool(extract_tool_calls(text).calls)
        assert_stream_equals_whole(LLAMA3_JSON, text, random_cuts(rng, text))
    assert num_with_calls > 100
