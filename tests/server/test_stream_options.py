"""`stream_options` as vLLM handles it: only with stream true (else a 400 naming it, before the engine sees
the request); vLLM's continuous_usage_stats puts its choice's usage so far on every chunk that carries
choices, the last usage-only chunk still following include_usage; unknown keys inside it are
ignored with the same warning as unknown request fields."""
from __future__ import annotations

import json
import logging

import openai
import pytest

from server_harness import MODEL_NAME, assert_400

IGNORED = "The following fields were present in the request but ignored"
ONLY_WITH_STREAM = "Stream options can only be defined when `stream=True`."
ENDPOINTS = ["chat", "completions"]
BOTH = {"include_usage": True, "continuous_usage_stats": True}
MAX_TOKENS = 6


def body(endpoint: str, **fields) -> dict:
    """A small greedy request of MAX_TOKENS tokens (EOS ignored) for `endpoint`, with `fields` on top."""
    base = {"model": MODEL_NAME, "max_tokens": MAX_TOKENS, "temperature": 0, "ignore_eos": True}
    if endpoint == "chat":
        base["messages"] = [{"role": "user", "content": "hi"}]
    else:
        base["prompt"] = "hi"
    return {**base, **fields}


def url(endpoint: str) -> str:
    return "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"


def stream_chunks(http, endpoint: str, **fields) -> list[dict]:
    """The chunks of a streamed request (a 200, ended by [DONE], no in-band error)."""
    with http.stream("POST", url(endpoint), json=body(endpoint, stream=True, **fields)) as resp:
        assert resp.status_code == 200, resp.read()
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(event) for event in events[:-1]]
    assert all("error" not in chunk for chunk in chunks), chunks
    return chunks


def chunk_tokens(chunk: dict) -> int:
    """How many tokens a chunk streamed (requests with logprobs: one logprob entry per token)."""
    logprobs = chunk["choices"][0]["logprobs"]
    if logprobs is None:
        return 0
    return len(logprobs["content"] if "content" in logprobs else logprobs["tokens"])


def assert_continuous_usage(chunks: list[dict], num_tokens: int) -> dict:
    """Every chunk with choices carries its choice's usage so far (vLLM's): completion_tokens grow by each
    chunk's tokens; the choices' ends add up to `num_tokens`, the last usage-only chunk's; that usage."""
    *with_choices, last = chunks
    assert last["choices"] == [] and last["usage"] is not None
    final, so_far = last["usage"], {}
    for chunk in with_choices:
        assert len(chunk["choices"]) == 1 and chunk["usage"] is not None, chunk
        index = chunk["choices"][0]["index"]
        so_far[index] = so_far.get(index, 0) + chunk_tokens(chunk)
        usage = chunk["usage"]
        assert usage["prompt_tokens"] == final["prompt_tokens"]
        assert usage["completion_tokens"] == so_far[index], (chunk, so_far)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    assert sum(so_far.values()) == final["completion_tokens"] == num_tokens
    return final


@pytest.mark.parametrize("options", [{"include_usage": True}, BOTH, {}], ids=["include_usage", "both", "empty"])
@pytest.mark.parametrize("stream", [False, None], ids=["stream_false", "stream_absent"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_stream_options_without_stream_is_400(server, http, engine_calls, endpoint, stream, options):
    fields = {"stream_options": options} if stream is None else {"stream_options": options, "stream": stream}
    assert assert_400(http.post(url(endpoint), json=body(endpoint, **fields)), "stream_options") == ONLY_WITH_STREAM
    assert engine_calls == []
    stats = server.wait_idle()
    assert stats.num_running == stats.num_waiting == 0
    assert stats.num_free_blocks == stats.num_total_blocks


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_null_stream_options_without_stream_is_served(http, endpoint):
    resp = http.post(url(endpoint), json=body(endpoint, stream_options=None, stream=False))
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == MAX_TOKENS


def test_openai_client_raises_bad_request(client, engine_calls):
    messages = [{"role": "user", "content": "hi"}]
    calls = [lambda: client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=4,
                                                    stream_options={"include_usage": True}),
             lambda: client.completions.create(model=MODEL_NAME, prompt="hi", max_tokens=4, stream=False,
                                               stream_options={"include_usage": True})]
    for call in calls:
        with pytest.raises(openai.BadRequestError) as info:
            call()
        assert info.value.status_code == 400 and info.value.param == "stream_options"
        assert info.value.message.endswith(ONLY_WITH_STREAM)
    assert engine_calls == []


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_continuous_usage_on_every_chunk(http, endpoint):
    logprobs = {"logprobs": True} if endpoint == "chat" else {"logprobs": 1}
    chunks = stream_chunks(http, endpoint, stream_options=BOTH, **logprobs)
    final = assert_continuous_usage(chunks, MAX_TOKENS)
    assert chunks[-2]["usage"] == final          # one choice: its usage is the response's
    plain = http.post(url(endpoint), json=body(endpoint)).json()["usage"]
    assert final == plain
    if endpoint == "chat":     # the role chunk comes before any token
        assert chunks[0]["choices"][0]["delta"]["role"] == "assistant"
        assert chunks[0]["usage"]["completion_tokens"] == 0


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_continuous_usage_with_n_2_counts_each_choice(http, endpoint):
    logprobs = {"logprobs": True} if endpoint == "chat" else {"logprobs": 1}
    chunks = stream_chunks(http, endpoint, stream_options=BOTH, n=2, temperature=1.0, **logprobs)
    assert_continuous_usage(chunks, 2 * MAX_TOKENS)
    assert {chunk["choices"][0]["index"] for chunk in chunks[:-1]} == {0, 1}


def test_continuous_usage_of_several_prompts_counts_each_choices_prompt(http):
    prompts = ["hi", "a longer prompt of more bytes"]           # the byte tokenizer: one token a byte
    chunks = stream_chunks(http, "completions", prompt=prompts, n=2, temperature=1.0, stream_options=BOTH)
    for chunk in chunks[:-1]:
        assert chunk["usage"]["prompt_tokens"] == len(prompts[chunk["choices"][0]["index"] // 2])
    assert chunks[-1]["usage"]["prompt_tokens"] == sum(map(len, prompts))
    assert chunks[-1]["usage"]["completion_tokens"] == 4 * MAX_TOKENS


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_continuous_usage_grows_one_token_a_chunk(http, script, endpoint):
    """Without logprobs: a scripted answer of one token per step, so each text chunk adds one token."""
    script(["a", "b", "c"])
    chunks = stream_chunks(http, endpoint, stream_options=BOTH)
    texts = [(c["choices"][0]["delta"].get("content") if endpoint == "chat" else c["choices"][0]["text"])
             for c in chunks[:-1]]
    counts = [c["usage"]["completion_tokens"] for c in chunks[:-1]]
    expected = {"chat": (["", "a", "b", "c", None], [0, 1, 2, 3, 3]), "completions": (["a", "b", "c"], [1, 2, 3])}
    assert (texts, counts) == expected[endpoint]
    assert chunks[-1]["usage"]["completion_tokens"] == 3


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_include_usage_alone_is_unchanged(http, endpoint):
    chunks = stream_chunks(http, endpoint, stream_options={"include_usage": True})
    assert all(chunk["usage"] is None for chunk in chunks[:-1])
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS


@pytest.mark.parametrize("options,continuous,final", [
    ({"include_usage": False, "continuous_usage_stats": True}, False, False),   # vLLM: needs include_usage
    ({"continuous_usage_stats": True}, True, True),       # vLLM: include_usage defaults to true
    ({}, False, False),                                   # OpenAI: no usage unless asked
    ({"include_usage": True, "continuous_usage_stats": False}, False, True),
], ids=["include_usage_false", "continuous_alone", "empty", "continuous_false"])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_continuous_usage_follows_include_usage_as_vllm(http, endpoint, options, continuous, final):
    chunks = stream_chunks(http, endpoint, stream_options=options)
    with_choices = [chunk for chunk in chunks if chunk["choices"]]
    assert [chunk["usage"] is not None for chunk in with_choices] == [continuous] * len(with_choices)
    assert (chunks[-1]["choices"] == []) == final
    if final:
        assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS


def test_openai_client_streams_continuous_usage(client):
    stream = client.chat.completions.create(model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}],
                                            max_tokens=MAX_TOKENS, temperature=0, logprobs=True, stream=True,
                                            extra_body={"ignore_eos": True}, stream_options=BOTH)
    chunks = list(stream)
    counts = [chunk.usage.completion_tokens for chunk in chunks]
    assert counts == sorted(counts) and counts[0] == 0 and counts[-1] == MAX_TOKENS
    assert chunks[-1].choices == [] and all(chunk.choices for chunk in chunks[:-1])


def ignored_warnings(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records if IGNORED in r.getMessage()]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_unknown_stream_options_key_is_warned_once(http, caplog, endpoint):
    options = {"include_usage": True, "continuous_usage_stats": False, "foo_bar": 1}
    with caplog.at_level(logging.WARNING, logger="server.request_fields"):
        chunks = stream_chunks(http, endpoint, stream_options=options, top_level_extra=2)
    assert chunks[-1]["usage"]["completion_tokens"] == MAX_TOKENS
    warnings = ignored_warnings(caplog)
    assert len(warnings) == 1, warnings
    assert "'stream_options.foo_bar'" in warnings[0] and "'top_level_extra'" in warnings[0]
    assert "include_usage" not in warnings[0] and "continuous_usage_stats" not in warnings[0]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_known_stream_options_are_not_warned(http, caplog, endpoint):
    with caplog.at_level(logging.WARNING, logger="server.request_fields"):
        stream_chunks(http, endpoint, stream_options=BOTH)
    assert ignored_warnings(caplog) == []
