"""vLLM's X-Request-Id: a completions response (and every chunk of its stream) is `cmpl-<the header>`."""
from __future__ import annotations

import json


def test_the_header_names_the_response(http):
    resp = http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 2}, headers={"X-Request-Id": "trace-42"})
    assert resp.status_code == 200 and resp.json()["id"] == "cmpl-trace-42"


def test_the_header_names_every_chunk(http):
    body = {"prompt": "hi", "max_tokens": 3, "n": 2, "stream": True, "stream_options": {"include_usage": True}}
    resp = http.post("/v1/completions", json=body, headers={"X-Request-Id": "trace-43"})
    chunks = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    assert chunks and {chunk["id"] for chunk in chunks} == {"cmpl-trace-43"}


def test_one_header_value_twice_is_served_twice(http):
    """The engine's ids stay unique: two requests with one X-Request-Id do not collide."""
    bodies = [{"prompt": ["a", "b"], "max_tokens": 2}, {"prompt": "c", "max_tokens": 2}]
    for body in bodies:
        resp = http.post("/v1/completions", json=body, headers={"X-Request-Id": "same"})
        assert resp.status_code == 200 and resp.json()["id"] == "cmpl-same"


def test_without_the_header_each_response_has_its_own_id(http):
    ids = {http.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1}).json()["id"] for _ in range(2)}
    assert len(ids) == 2 and all(i.startswith("cmpl-") for i in ids)
