"""Every error answer of the real server: status code and the OpenAI error body naming the field."""
from __future__ import annotations

import threading
import time

import httpx
import pytest

from server.errors import from_value_error
from server_harness import API_KEY, MODEL_NAME, engine_config, http_client

AUTH = {"Authorization": f"Bearer {API_KEY}"}


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    # one running sequence and one waiting request at most, so a full queue is easy to reach
    config = engine_config(tiny_model_path, max_num_seqs=1, max_queue_len=1, max_model_len=64)
    return start_server(config, api_key=API_KEY)


@pytest.fixture(scope="module")
def http(server):
    """This module's client sends the API key (and waits 30 s at most)."""
    with http_client(server, timeout=30, headers=AUTH) as client:
        yield client


def assert_error(resp: httpx.Response, status: int, param: str | None, words: tuple[str, ...] = ()) -> dict:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert error["code"] == status and error["param"] == param, error
    assert isinstance(error["type"], str) and error["type"]
    for word in words:
        assert word in error["message"], error["message"]
    return error


def completion(http, **body):
    return http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2, **body})


def test_bad_json_is_400(http):
    resp = http.post("/v1/completions", content=b'{"model": "x", "prompt": ', headers={"content-type": "application/json"})
    assert_error(resp, 400, None, ("JSON",))


@pytest.mark.parametrize("field,value", [("max_tokens", "many"), ("temperature", "hot"), ("n", 1.5),
                                         ("stop", 3), ("prompt", {"a": 1}), ("logprobs", "yes")])
def test_wrong_types_are_400_naming_the_field(http, field, value):
    assert_error(completion(http, **{field: value}), 400, field, (field,))


@pytest.mark.parametrize("field,value", [("max_tokens", 0), ("temperature", -0.5), ("top_p", 0), ("top_p", 1.5),
                                         ("top_k", -3), ("min_p", 2.0), ("n", 0), ("presence_penalty", 3),
                                         ("frequency_penalty", -3), ("repetition_penalty", 0), ("logprobs", 50),
                                         ("min_tokens", 5), ("best_of", 2), ("suffix", "tail"),
                                         ("logit_bias", {"not-an-id": 1})])
def test_out_of_range_values_are_400_naming_the_field(http, field, value):
    assert_error(completion(http, **{field: value}), 400, field, (field,))


def test_missing_prompt_and_chat_errors(http):
    assert_error(http.post("/v1/completions", json={"model": MODEL_NAME}), 400, "prompt", ("prompt",))
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    assert_error(http.post("/v1/chat/completions", json={**chat, "messages": []}), 400, "messages")
    assert_error(http.post("/v1/chat/completions", json={**chat, "top_logprobs": 2}), 400, "top_logprobs")
    assert_error(http.post("/v1/chat/completions", json={**chat, "temperature": 5}), 400, "temperature")


@pytest.mark.parametrize("prompt", ["", [], [[]]])
def test_empty_prompt_is_400(http, prompt):
    assert_error(completion(http, prompt=prompt), 400, "prompt", ("empty",))


def test_out_of_vocab_token_id_is_400(http):
    assert_error(completion(http, prompt=[1, 2, 10**6]), 400, "prompt")


@pytest.mark.parametrize("stream", [False, True])
def test_too_long_prompt_is_400_before_any_stream_byte(http, stream):
    resp = completion(http, prompt="x" * 60, max_tokens=10, stream=stream)
    assert resp.headers["content-type"].startswith("application/json")
    assert_error(resp, 400, "prompt", ("max_model_len", "max_tokens"))
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "y" * 80}], "stream": stream}
    assert_error(http.post("/v1/chat/completions", json=chat), 400, "messages", ("max_model_len",))


def test_prompt_plus_max_tokens_past_max_model_len_is_400(http):
    """vLLM's server refuses what its offline engine accepts (and stops at max_model_len): a short prompt
    whose max_tokens runs past max_model_len (64) is a 400 from the server's own check."""
    assert_error(completion(http, prompt=[5] * 10, max_tokens=60), 400, "prompt",
                 ("max_model_len is 64", "70 (10 prompt tokens + max_tokens 60)"))
    chat = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 64}
    assert_error(http.post("/v1/chat/completions", json=chat), 400, "messages", ("max_model_len", "max_tokens 64"))


def test_unknown_model_is_404(http):
    assert_error(completion(http, model="gpt-17"), 404, "model", ("gpt-17",))
    chat = {"model": "nope", "messages": [{"role": "user", "content": "hi"}]}
    assert_error(http.post("/v1/chat/completions", json=chat), 404, "model")


def test_unknown_route_and_method_use_the_error_shape(http):
    assert_error(http.get("/v1/nothing-here"), 404, None)
    assert_error(http.get("/v1/completions"), 405, None)


def test_missing_or_wrong_api_key_is_401(server):
    with http_client(server, timeout=30) as anon:
        body = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 2}
        assert_error(anon.post("/v1/completions", json=body), 401, None, ("API key",))
        wrong = anon.post("/v1/completions", json=body, headers={"Authorization": f"Bearer {API_KEY}x"})
        assert_error(wrong, 401, None, ("API key",))
        assert_error(anon.get("/v1/models", headers={"Authorization": API_KEY}), 401, None)
        assert anon.get("/health").status_code == 200        # open without a key
        assert anon.get("/metrics").status_code == 200
        assert anon.get("/ping").status_code == 200 and anon.post("/ping").status_code == 200
        assert anon.get("/version").status_code == 200
        assert_error(anon.post("/tokenize", json={"prompt": "hi"}), 401, None)
        assert anon.get("/v1/models", headers=AUTH).status_code == 200



def test_full_queue_is_429(server, http, slow_steps):
    long_body = {"model": MODEL_NAME, "prompt": "running", "max_tokens": 50, "ignore_eos": True, "stream": True}
    waiting_result = {}
    with http.stream("POST", "/v1/completions", json=long_body) as running:
        lines = running.iter_lines()                          # keep it: dropping it closes the stream
        next(lines)                                           # first chunk: the only sequence slot is taken
        waiter = threading.Thread(target=lambda: waiting_result.update(
            resp=completion(http, prompt="waiting", max_tokens=3)))
        waiter.start()
        deadline = time.monotonic() + 10
        while server.stats().num_waiting < 1 and time.monotonic() < deadline:
            time.sleep(0.01)
        assert server.stats().num_waiting == 1
        assert_error(completion(http, prompt="one too many"), 429, None, ("queue", "full"))
    waiter.join(30)                                           # closing the stream aborted the running one
    assert waiting_result["resp"].status_code == 200
    assert waiting_result["resp"].json()["usage"]["completion_tokens"] >= 1
    stats = server.wait_idle()
    assert stats.num_free_blocks == stats.num_total_blocks


def test_value_errors_name_the_field_their_message_starts_with():
    fields = ("structured_outputs", "bad_words")
    for message, param in (("structured_outputs choices must tokenize to ...", "structured_outputs"),
                           ("structured_outputs.json is not supported: ...", "structured_outputs"),
                           ("bad_words must be strings ...", "bad_words"), ("the prompt is too long", "prompt")):
        error = from_value_error(ValueError(message), fields, default="prompt")
        assert (error.status, error.param, error.message) == (400, param, message)
