"""Request fields this engine cannot honour: response_format other than text (JSON mode, structured
outputs) and vLLM's grammar-guided extras are a 400 naming the field, before anything reaches the engine,
and so are prompt_logprobs out of [0, 20] or above 0 with stream (vLLM's message); any other unknown
field is ignored with one warning naming it (as vLLM does)."""
from __future__ import annotations

import logging

import openai
import pytest

from server_harness import MODEL_NAME, assert_400

IGNORED = "The following fields were present in the request but ignored"
SCHEMA = {"name": "answer", "schema": {"type": "object", "properties": {"a": {"type": "string"}}}}
FORMATS = [{"type": "json_object"}, {"type": "json_schema", "json_schema": SCHEMA}, {"type": "structural_tag"}]
EXTRAS = [("guided_json", {"type": "object"}), ("guided_regex", "[a-z]+"), ("guided_grammar", 'root ::= "a"')]
ENDPOINTS = ["chat", "completions"]


def post(http, endpoint: str, **body):
    """A small greedy request to /v1/chat/completions or /v1/completions with `body`'s extra fields."""
    if endpoint == "chat":
        base = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4}
        return http.post("/v1/chat/completions", json={**base, "temperature": 0, **body})
    base = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 4, "temperature": 0}
    return http.post("/v1/completions", json={**base, **body})


def assert_served(resp) -> None:
    """A 200 with generated tokens."""
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["usage"]["completion_tokens"] >= 1
    choice = body["choices"][0]
    assert isinstance(choice["message"]["content"] if "message" in choice else choice["text"], str)


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("response_format", FORMATS, ids=lambda f: f["type"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_response_format_other_than_text_is_400(http, engine_calls, endpoint, response_format, stream):
    resp = post(http, endpoint, response_format=response_format, stream=stream)
    words = (repr(response_format["type"]), "guided decoding", "drop response_format", "{'type': 'text'}")
    assert_400(resp, "response_format", *words)
    assert engine_calls == []


@pytest.mark.parametrize("response_format", [{"type": "text"}, None], ids=["text", "null"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_response_format_text_is_served(http, engine_calls, endpoint, response_format):
    assert_served(post(http, endpoint, response_format=response_format))
    assert len(engine_calls) == 1


def test_response_format_of_the_wrong_shape_is_400(http):
    assert_400(post(http, "chat", response_format="json_object"), "response_format", "response_format")


def test_openai_client_json_mode_raises_bad_request(client, engine_calls):
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                       max_tokens=4, response_format={"type": "json_object"})
    assert info.value.status_code == 400 and info.value.param == "response_format"
    assert "drop response_format" in info.value.message
    assert engine_calls == []


@pytest.mark.parametrize("field,value", EXTRAS, ids=[name for name, _ in EXTRAS])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_guided_decoding_extras_are_400_naming_the_field(http, engine_calls, endpoint, field, value):
    assert_400(post(http, endpoint, **{field: value}), field, field, "not supported", f"drop {field}")
    assert engine_calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_null_extras_are_served_without_a_warning(http, engine_calls, caplog, endpoint):
    nulls = {name: None for name in [name for name, _ in EXTRAS] + ["guided_choice", "structured_outputs",
                                                                     "guided_decoding_backend"]}
    with caplog.at_level(logging.WARNING, logger="server.request_fields"):
        assert_served(post(http, endpoint, prompt_logprobs=None, **nulls))
    assert IGNORED not in caplog.text
    assert len(engine_calls) == 1


@pytest.mark.parametrize("value", [-1, "many", 1.5])      # above max_logprobs: test_max_logprobs_server.py
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_bad_prompt_logprobs_are_400(http, engine_calls, endpoint, value):
    assert_400(post(http, endpoint, prompt_logprobs=value), "prompt_logprobs", "prompt_logprobs")
    assert engine_calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_prompt_logprobs_with_stream_are_400_above_0(http, engine_calls, endpoint):
    words = ("`prompt_logprobs` are not available when `stream=True`.",)
    assert_400(post(http, endpoint, prompt_logprobs=1, stream=True), "prompt_logprobs", *words)
    assert engine_calls == []
    resp = post(http, endpoint, prompt_logprobs=0, stream=True)        # vLLM serves 0 (and streams none)
    assert resp.status_code == 200 and "prompt_logprobs" not in resp.text and resp.text.endswith("[DONE]\n\n")
    assert len(engine_calls) == 1


@pytest.mark.parametrize("value", [0, 5])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_prompt_logprobs_are_served(http, engine_calls, endpoint, value):
    resp = post(http, endpoint, prompt_logprobs=value)
    assert_served(resp)
    body = resp.json()
    prompt_logprobs = body["prompt_logprobs"] if endpoint == "chat" else body["choices"][0]["prompt_logprobs"]
    assert prompt_logprobs[0] is None and len(prompt_logprobs) == body["usage"]["prompt_tokens"]
    assert all(len(entry) in (value, value + 1) for entry in prompt_logprobs[1:])
    assert len(engine_calls) == 1


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unknown_field_is_served_with_one_warning_naming_it(http, engine_calls, caplog, endpoint):
    with caplog.at_level(logging.WARNING, logger="server.request_fields"):
        assert_served(post(http, endpoint, foo=1, bar_baz={"x": 1}))
    warnings = [r.getMessage() for r in caplog.records if IGNORED in r.getMessage()]
    assert len(warnings) == 1, warnings
    assert "'foo'" in warnings[0] and "'bar_baz'" in warnings[0]
    assert len(engine_calls) == 1


def test_deliberately_open_models_keep_their_extra_keys_without_a_warning(http, caplog):
    """Messages with extra keys and tool functions with extra fields (e.g. strict) stay accepted."""
    tools = [{"type": "function", "function": {"name": "f", "strict": True, "parameters": {"type": "object"}}}]
    messages = [{"role": "user", "content": "hi", "metadata": {"k": "v"}}]
    with caplog.at_level(logging.WARNING, logger="server.request_fields"):
        assert_served(post(http, "chat", messages=messages, tools=tools, tool_choice="none"))
    assert IGNORED not in caplog.text


def test_after_rejected_requests_the_server_still_serves(server, http, engine_calls):
    rejected = [post(http, "chat", response_format={"type": "json_object"}, stream=True),
                post(http, "completions", guided_regex="a+"), post(http, "chat", prompt_logprobs=1, stream=True)]
    assert [r.status_code for r in rejected] == [400, 400, 400]
    assert engine_calls == []
    stats = server.wait_idle()
    assert stats.num_running == stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks
    assert_served(post(http, "chat"))
    assert_served(post(http, "completions"))
    assert len(engine_calls) == 2
