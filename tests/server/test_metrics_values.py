"""The latency histograms' values: observed once per engine request (each prompt of a completions request is
one, as in vLLM), inter-token latencies within one request's stream only (one per read bringing new
tokens: a read that merged several steps observes one)."""
from __future__ import annotations

import re
from types import SimpleNamespace

import pytest

from engine.outputs import TOKEN_TIMES, CompletionOutput, RequestOutput
from server.metrics import ServerMetrics
from server_harness import MODEL_NAME

HISTOGRAMS = ("time_to_first_token_seconds", "inter_token_latency_seconds", "e2e_request_latency_seconds")


def _counts(http) -> dict[str, float]:
    text = http.get("/metrics").text
    counts = {}
    for name in HISTOGRAMS:
        match = re.search(rf'^vllm:{name}_count{{model_name="{MODEL_NAME}"}} (\S+)$', text, re.MULTILINE)
        counts[name] = float(match.group(1))
    return counts


@pytest.mark.parametrize("stream", [False, True])
def test_each_prompt_is_timed_as_its_own_request(http, stream):
    before = _counts(http)
    body = {"prompt": ["one", "two two", "three three three"], "max_tokens": 5, "ignore_eos": True,
            "stream": stream}
    assert http.post("/v1/completions", json=body).status_code == 200
    after = _counts(http)
    observed = {name: after[name] - before[name] for name in HISTOGRAMS}
    assert observed["time_to_first_token_seconds"] == observed["e2e_request_latency_seconds"] == 3
    assert 3 <= observed["inter_token_latency_seconds"] <= 3 * 4    # fewer where a read merged steps


def test_a_chat_request_is_timed_once(http):
    before = _counts(http)
    body = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "ignore_eos": True}
    assert http.post("/v1/chat/completions", json=body).status_code == 200
    after = _counts(http)
    observed = {name: after[name] - before[name] for name in HISTOGRAMS}
    assert observed["time_to_first_token_seconds"] == observed["e2e_request_latency_seconds"] == 1
    assert 1 <= observed["inter_token_latency_seconds"] <= 3


def test_a_final_only_output_is_timed_at_its_engine_steps():
    """A request that is not streamed gets one output (FINAL_ONLY): its latencies are the engine's times of the
    steps that brought it tokens (metrics TOKEN_TIMES), not the time it arrived."""
    metrics = ServerMetrics(SimpleNamespace(stats=None, is_healthy=lambda: True), MODEL_NAME)
    timer = metrics.timer()
    steps = [timer.arrival + dt for dt in (0.25, 0.5, 1.0)]
    out = RequestOutput("r", None, [1], [CompletionOutput(0, "abc", [1, 2, 3], "length")], True,
                        metrics={TOKEN_TIMES: steps})
    timer.on_output(out)
    timer.finish()

    def sample(name: str, suffix: str) -> float:
        return metrics.registry.get_sample_value(f"vllm:{name}_{suffix}", {"model_name": MODEL_NAME})
    assert [sample(name, "count") for name in HISTOGRAMS] == [1, 2, 1]
    assert [sample(name, "sum") for name in HISTOGRAMS] == pytest.approx([0.25, 0.75, 1.0])
