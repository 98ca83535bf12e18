"""Several served model names (vLLM's `--served-model-name A B`): requests may use any, each response and
chunk carries the name its request used (the first where it names none), /v1/models lists them all, and
any other name is a 404 listing them."""
from __future__ import annotations

import json

import pytest

from server_harness import ServerThread, engine_config, http_client

NAMES = ["main-model", "alias"]


@pytest.fixture(scope="module")
def http():
    with ServerThread(engine_config("preset:tiny-qwen3"), served_model_name=NAMES) as server:
        with http_client(server) as client:
            yield client


def test_models_lists_every_name(http):
    cards = http.get("/v1/models").json()["data"]
    assert [card["id"] for card in cards] == NAMES
    assert all(card["max_model_len"] == 128 for card in cards)


@pytest.mark.parametrize("name", NAMES + [None])
def test_each_response_carries_the_requested_name(http, name):
    expected = name or NAMES[0]
    body = {"prompt": "hi", "max_tokens": 3, "ignore_eos": True} | ({"model": name} if name else {})
    assert http.post("/v1/completions", json=body).json()["model"] == expected
    chat = {"model": expected, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
    assert http.post("/v1/chat/completions", json=chat).json()["model"] == expected
    stream = http.post("/v1/chat/completions", json=chat | {"stream": True,
                                                           "stream_options": {"include_usage": True}})
    chunks = [json.loads(line[6:]) for line in stream.text.splitlines()
              if line.startswith("data: {")]
    assert len(chunks) >= 3 and {chunk["model"] for chunk in chunks} == {expected}
    stream = http.post("/v1/completions", json=body | {"stream": True})
    chunks = [json.loads(line[6:]) for line in stream.text.splitlines() if line.startswith("data: {")]
    assert chunks and {chunk["model"] for chunk in chunks} == {expected}


def test_another_name_is_a_404_listing_the_served_ones(http):
    resp = http.post("/v1/completions", json={"model": "main", "prompt": "hi", "max_tokens": 2})
    assert resp.status_code == 404
    error = resp.json()["error"]
    assert error["param"] == "model"
    assert "'main' does not exist; this server serves 'main-model', 'alias'" in error["message"]
