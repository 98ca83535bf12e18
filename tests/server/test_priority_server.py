"""The requests' `priority` (vLLM's extra field): with --scheduling-policy priority the server takes it
(HTTP and the official client's extra_body, through the engine's thread or its process) and hands it
to the engine, and the greedy answer does not change; on a default (fcfs) server a priority other than
0 is a 400 in the OpenAI error shape with vLLM's message, before anything reaches the engine."""
from __future__ import annotations

import openai
import pytest

from engine.engine_process import ProcessAsyncEngine
from server_harness import MODEL_NAME, ServerThread, assert_400, engine_config, http_client, openai_client

NOT_ENABLED = "Got priority {} but Priority scheduling is not enabled."
ENDPOINTS = ["chat", "completions"]


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    return start_server(engine_config(tiny_model_path, scheduling_policy="priority"))


@pytest.fixture(scope="module")
def fcfs_server(tiny_model_path, start_server):
    return start_server(engine_config(tiny_model_path))


@pytest.fixture(scope="module")
def fcfs_http(fcfs_server):
    with http_client(fcfs_server) as client:
        yield client


def spy_priorities(monkeypatch, server) -> list:
    """The priority each LLMEngine.add_request of `server` receives (the request still runs)."""
    seen, engine = [], server.async_engine.engine
    add = engine.add_request

    def recording_add(*args, priority=0, **kwargs):
        seen.append(priority)
        return add(*args, priority=priority, **kwargs)

    monkeypatch.setattr(engine, "add_request", recording_add)
    return seen


def post(http, endpoint: str, **body):
    """A small greedy request to /v1/chat/completions or /v1/completions with `body`'s extra fields."""
    if endpoint == "chat":
        base = {"model": MODEL_NAME, "messages": [{"role": "user", "content": "hi"}]}
        return http.post("/v1/chat/completions", json={**base, "max_tokens": 5, "temperature": 0, **body})
    base = {"model": MODEL_NAME, "prompt": "hi", "max_tokens": 5, "temperature": 0}
    return http.post("/v1/completions", json={**base, **body})


def answer(resp) -> str:
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_priority_server_hands_the_priority_to_the_engine(http, server, monkeypatch, endpoint):
    seen = spy_priorities(monkeypatch, server)
    plain = answer(post(http, endpoint))
    assert [answer(post(http, endpoint, priority=p)) for p in (-5, 0, 7)] == [plain] * 3
    assert seen == [0, -5, 0, 7]


def test_priority_server_streams_with_a_priority(http):
    with http.stream("POST", "/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 4,
                                                      "stream": True, "priority": 3}) as resp:
        assert resp.status_code == 200
        assert "data: [DONE]" in resp.read().decode()


def test_openai_client_extra_body_priority(client, fcfs_server):
    messages = [{"role": "user", "content": "hi"}]
    resp = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=4,
                                          extra_body={"priority": 1})
    assert resp.usage.completion_tokens >= 1
    with pytest.raises(openai.BadRequestError) as info:
        openai_client(fcfs_server).chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=4,
                                                           extra_body={"priority": 1})
    assert info.value.status_code == 400 and info.value.param == "priority"
    assert info.value.message.endswith(NOT_ENABLED.format(1))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_fcfs_server_refuses_a_priority_with_vllms_message(fcfs_http, fcfs_server, monkeypatch, endpoint,
                                                           stream):
    seen = spy_priorities(monkeypatch, fcfs_server)
    for priority in (1, -2):
        assert_400(post(fcfs_http, endpoint, priority=priority, stream=stream), "priority",
                   NOT_ENABLED.format(priority))
    assert seen == []
    answer(post(fcfs_http, endpoint, priority=0))
    assert seen == [0]


@pytest.mark.parametrize("bad", ["high", 1.5, [1]])
def test_a_priority_that_is_not_an_int_is_400(http, bad):
    assert_400(post(http, "chat", priority=bad), "priority")


def test_priority_through_the_engine_process(tiny_model_path, http):
    config = engine_config(tiny_model_path, scheduling_policy="priority")
    with ServerThread(config, engine_cls=ProcessAsyncEngine) as process_server:
        with http_client(process_server) as process_http:
            for endpoint in ENDPOINTS:
                assert answer(post(process_http, endpoint, priority=4)) == answer(post(http, endpoint))
