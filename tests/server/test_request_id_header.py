"""vLLM's X-Request-Id header (else the body's `request_id` extra): a completions response (and every
chunk of its stream) is `cmpl-<it>`, a chat response `chatcmpl-<it>`."""
from __future__ import annotations

import json

import pytest

MESSAGES = [{"role": "user", "content": "hi"}]


def test_the_header_names_the_response(http):
    resp = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers={"X-Request-Id": "trace-42"})
    assert resp.status_code == 200 and resp.json()["id"] == "cmpl-trace-42"


@pytest.mark.parametrize("route, body, prefix", [
    ("/v1/completions", {"prompt": "hi", "n": 2}, "cmpl-"), ("/v1/chat/completions", {"messages": MESSAGES}, "chatcmpl-")])
def test_the_header_names_every_chunk(http, route, body, prefix):
    body = {**body, "max_tokens": 3, "stream": True, "stream_options": {"include_usage": True}}
    resp = http.post(route, json=body, headers={"X-Request-Id": "trace-43"})
    chunks = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    assert chunks and {chunk["id"] for chunk in chunks} == {prefix + "trace-43"}


def test_a_chat_response_is_named_by_the_header_or_the_body(http):
    """Chat ignored both (a random id)."""
    body = {"messages": MESSAGES, "max_tokens": 2, "request_id": "from-body"}
    assert http.post("/v1/chat/completions", json=body).json()["id"] == "chatcmpl-from-body"
    resp = http.post("/v1/chat/completions", json=body, headers={"X-Request-Id": "from-header"})
    assert resp.json()["id"] == "chatcmpl-from-header"
    assert http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1, "request_id": "b"}).json()["id"] == "cmpl-b"


def test_one_header_value_twice_is_served_twice(http):
    """The engine's ids stay unique: two requests with one X-Request-Id do not collide."""
    bodies = [{"prompt": ["a", "b"], "max_tokens": 2}, {"prompt": "c", "max_tokens": 2}]
    for body in bodies:
        resp = http.post("/v1/completions", json=body, headers={"X-Request-Id": "same"})
        assert resp.status_code == 200 and resp.json()["id"] == "cmpl-same"


def test_without_the_header_each_response_has_its_own_id(http):
    for route, body, prefix in (("/v1/completions", {"prompt": "hi"}, "cmpl-"),
                                ("/v1/chat/completions", {"messages": MESSAGES}, "chatcmpl-")):
        ids = {http.post(route, json={**body, "max_tokens": 1}).json()["id"] for _ in range(2)}
        assert len(ids) == 2 and all(i.startswith(prefix) for i in ids)
