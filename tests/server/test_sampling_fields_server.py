"""Sampling fields on the server as vLLM serves them: an out-of-vocabulary logit_bias is that request's 400
(the engine goes on), biases are clamped to [-100, 100], -inf logprobs go out as -9999.0, and with n > 1
each streamed choice finishes once (a finished choice is not repeated while the others go on), its
finish chunk carrying the stop_reason."""
from __future__ import annotations

import json
from collections import Counter

import pytest

from server.serving import finite_logprob
from server_harness import MODEL_NAME

ENDPOINTS = {"chat": ("/v1/chat/completions", {"messages": [{"role": "user", "content": "hi"}]}),
             "completions": ("/v1/completions", {"prompt": "hi"})}


def post(http, endpoint: str, **fields):
    path, body = ENDPOINTS[endpoint]
    return http.post(path, json={"model": MODEL_NAME, "max_tokens": 4, "temperature": 0, **body, **fields})


def streamed(http, endpoint: str, **fields) -> list[dict]:
    path, body = ENDPOINTS[endpoint]
    with http.stream("POST", path, json={"model": MODEL_NAME, "stream": True, **body, **fields}) as resp:
        assert resp.status_code == 200, resp.read()
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [choice for event in events[:-1] for choice in json.loads(event)["choices"]]


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_an_out_of_vocabulary_logit_bias_is_a_400_and_the_engine_goes_on(http, endpoint):
    resp = post(http, endpoint, logit_bias={"999999": 5})
    assert resp.status_code == 400, resp.text
    error = resp.json()["error"]
    assert error["param"] == "logit_bias" and "[999999] in logit_bias contain out-of-vocab token ids" in error["message"]
    assert post(http, endpoint).status_code == 200 and http.get("/health").status_code == 200


def test_a_bias_beyond_100_is_clamped_as_vllm_does(http):
    """1e400 is valid JSON that parses to inf (NaN logits before); vLLM clamps every bias to [-100, 100]."""
    def text(bias: str) -> str:
        content = ('{"model": "%s", "prompt": "hi", "max_tokens": 3, "temperature": 0, "logit_bias": {"65": %s}}'
                   % (MODEL_NAME, bias))
        resp = http.post("/v1/completions", content=content, headers={"content-type": "application/json"})
        assert resp.status_code == 200, resp.text
        return resp.json()["choices"][0]["text"]
    assert text("1e400") == text("100") == "AAA"
    assert text("-1e400") == text("-100") != "AAA"


def test_minus_infinity_logprobs_go_out_as_vllms_floor():
    assert finite_logprob(float("-inf")) == -9999.0 and finite_logprob(-3.5) == -3.5
    assert json.dumps(finite_logprob(float("-inf"))) == "-9999.0"


@pytest.mark.parametrize("endpoint", sorted(ENDPOINTS))
def test_each_streamed_choice_finishes_once(http, endpoint):
    """n = 2 with stop strings: the choices stop at different steps; each has one finish chunk, after
    which it sends nothing, and (chat too) the finish of a stop string names it in stop_reason."""
    stops = ["a", "e", "1"]
    for seed in range(6):
        choices = streamed(http, endpoint, n=2, max_tokens=30, temperature=1.0, seed=seed, stop=stops,
                           ignore_eos=True)
        finishes = [c for c in choices if c["finish_reason"] is not None]
        assert Counter(c["index"] for c in finishes) == {0: 1, 1: 1}
        for finish in finishes:
            assert choices.index(finish) == max(i for i, c in enumerate(choices) if c["index"] == finish["index"])
            assert (finish["stop_reason"] in stops) == (finish["finish_reason"] == "stop")
