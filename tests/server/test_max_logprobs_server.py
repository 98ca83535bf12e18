"""The engine's max_logprobs caps the server's logprobs (completions), top_logprobs (chat) and
prompt_logprobs: above it a 400 naming the field with vLLM's message, before the engine sees the request;
a server started with a higher cap serves more."""
from __future__ import annotations

import pytest

from server_harness import MODEL_NAME, ServerThread, assert_400, engine_config, http_client, post_to

BASE = {"model": MODEL_NAME, "max_tokens": 2, "temperature": 0}
ASKS = [("completions", {"logprobs": 21}, "logprobs", "sample"),
        ("chat", {"logprobs": True, "top_logprobs": 21}, "top_logprobs", "sample"),
        ("completions", {"prompt_logprobs": 21}, "prompt_logprobs", "prompt"),
        ("chat", {"prompt_logprobs": 21}, "prompt_logprobs", "prompt")]


@pytest.mark.parametrize("endpoint, fields, param, kind", ASKS)
def test_above_the_cap_is_400_naming_the_field(http, engine_calls, endpoint, fields, param, kind):
    resp = post_to(http, endpoint, "hi", **BASE, **fields)
    assert_400(resp, param, f"Requested {kind} logprobs of 21, which is greater than max allowed: 20")
    assert engine_calls == []


def test_a_higher_cap_serves_more(tiny_model_path):
    with ServerThread(engine_config(tiny_model_path, max_logprobs=30)) as wide_server:
        with http_client(wide_server) as wide_http:
            resp = post_to(wide_http, "completions", "hi", **BASE, logprobs=25, prompt_logprobs=25)
            assert resp.status_code == 200, resp.text
            choice = resp.json()["choices"][0]          # (its top_logprobs are keyed by text, which bytes share)
            assert all(len(entry) >= 25 for entry in choice["prompt_logprobs"][1:])
            resp = post_to(wide_http, "chat", "hi", **BASE, logprobs=True, top_logprobs=25)
            assert len(resp.json()["choices"][0]["logprobs"]["content"][0]["top_logprobs"]) == 25
