"""The real server driven by the official `openai` client; greedy outputs equal the offline LLMEngine's."""
from __future__ import annotations

import importlib.metadata

import openai
import pytest

from engine.sampling_params import SamplingParams
from server_harness import MODEL_NAME, http_client, offline_generate

PROMPTS = ["Hello, my name is", "The capital of France", "1 2 3 4"]


def test_models_lists_served_name(client):
    models = client.models.list()
    assert [m.id for m in models.data] == [MODEL_NAME]


def test_greedy_completions_match_offline_engine(client, reference_engine):
    ref = offline_generate(reference_engine, PROMPTS, SamplingParams(max_tokens=8, temperature=0))
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS, max_tokens=8, temperature=0)
    assert [c.index for c in resp.choices] == [0, 1, 2]
    assert [c.text for c in resp.choices] == [r[0].text for r in ref]
    assert all(c.finish_reason == r[0].finish_reason for c, r in zip(resp.choices, ref))
    num_prompt = sum(len(reference_engine.tokenizer.encode(p)) for p in PROMPTS)
    assert resp.usage.prompt_tokens == num_prompt
    assert resp.usage.completion_tokens == sum(len(r[0].token_ids) for r in ref)
    assert resp.usage.total_tokens == num_prompt + resp.usage.completion_tokens


def test_token_id_prompt_and_echo(client, reference_engine):
    ids = reference_engine.tokenizer.encode("token ids in")
    ref = offline_generate(reference_engine, [ids], SamplingParams(max_tokens=5, temperature=0))[0][0]
    resp = client.completions.create(model=MODEL_NAME, prompt=ids, max_tokens=5, temperature=0, echo=True)
    assert resp.choices[0].text == "token ids in" + ref.text
    assert resp.usage.prompt_tokens == len(ids)


def test_streaming_completion_with_usage(client, reference_engine):
    ref = offline_generate(reference_engine, PROMPTS[:1], SamplingParams(max_tokens=10, temperature=0))[0][0]
    chunks = list(client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=10, temperature=0,
                                            stream=True, stream_options={"include_usage": True}))
    text = "".join(c.choices[0].text for c in chunks if c.choices)
    assert text == ref.text
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].choices == [] and chunks[-1].usage.completion_tokens == 10
    assert chunks[-1].usage.prompt_tokens == len(reference_engine.tokenizer.encode(PROMPTS[0]))


def test_completion_logprobs_match_offline(client, reference_engine):
    ref = offline_generate(reference_engine, PROMPTS[1:2], SamplingParams(max_tokens=4, temperature=0, logprobs=3))
    ref = ref[0][0]
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[1], max_tokens=4, temperature=0, logprobs=3)
    lp = resp.choices[0].logprobs
    tok = reference_engine.tokenizer
    assert lp.tokens == [tok.decode([t]) for t in ref.token_ids]
    assert lp.token_logprobs == pytest.approx([d[t].logprob for d, t in zip(ref.logprobs, ref.token_ids)], abs=1e-4)
    for top, d, t in zip(lp.top_logprobs, ref.logprobs, ref.token_ids):
        assert 3 <= len(top) <= 4 and max(top.values()) == pytest.approx(d[t].logprob, abs=1e-4)   # greedy: top
    assert lp.text_offset == [sum(len(x) for x in lp.tokens[:i]) for i in range(len(lp.tokens))]


def test_n_greater_than_one(client):
    resp = client.completions.create(model=MODEL_NAME, prompt=PROMPTS[:2], max_tokens=6, temperature=1.0, n=3,
                                     seed=7)
    assert sorted(c.index for c in resp.choices) == list(range(6))
    assert resp.usage.completion_tokens == 36
    with pytest.raises(openai.BadRequestError, match="n must be 1 when using greedy sampling, got 2"):  # vLLM's
        client.completions.create(model=MODEL_NAME, prompt=PROMPTS[0], max_tokens=6, temperature=0, n=2)


def test_chat_completion_matches_offline(client, reference_engine):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}]
    tok = reference_engine.tokenizer
    prompt = tok.encode(tok.apply_chat_template(messages, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)
    ref = offline_generate(reference_engine, [prompt], SamplingParams(max_tokens=8, temperature=0))[0][0]
    resp = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=8, temperature=0)
    assert resp.choices[0].message.role == "assistant"
    assert resp.choices[0].message.content == ref.text
    assert resp.usage.prompt_tokens == len(prompt) and resp.usage.completion_tokens == len(ref.token_ids)


def test_chat_streaming_and_logprobs(client):
    messages = [{"role": "user", "content": "Count"}]
    full = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0,
                                          logprobs=True, top_logprobs=2)
    content = full.choices[0].logprobs.content
    assert "".join(c.token for c in content) == full.choices[0].message.content
    assert all(len(c.top_logprobs) == 2 and c.top_logprobs[0].logprob == pytest.approx(c.logprob) for c in content)
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=6, temperature=0,
                                                 stream=True, stream_options={"include_usage": True}))
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == full.choices[0].message.content
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "length"
    assert chunks[-1].usage.completion_tokens == 6


def test_stop_string_and_stop_token_ids(client, reference_engine):
    prompts = ["Hello, my name is", "The capital of France", "1 2 3 4", "One, two", "Once upon a time"]
    ref = offline_generate(reference_engine, prompts, SamplingParams(max_tokens=16, temperature=0))
    # a printable character that appears after the first generated character: a stop string to cut at
    prompt, text, stop = next((p, r[0].text, ch) for p, r in zip(prompts, ref)
                              for ch in r[0].text[1:] if ch.isascii() and ch.isprintable() and ch != " ")
    resp = client.completions.create(model=MODEL_NAME, prompt=prompt, max_tokens=16, temperature=0, stop=[stop])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.choices[0].text == text[:text.index(stop)]
    token_ids = ref[0][0].token_ids
    resp = client.completions.create(model=MODEL_NAME, prompt=prompts[0], max_tokens=16, temperature=0,
                                     extra_body={"stop_token_ids": [token_ids[2]]})
    first = token_ids.index(token_ids[2])
    assert resp.choices[0].finish_reason == "stop"
    assert resp.usage.completion_tokens == first + 1


def test_tokenize_detokenize_health_metrics(server, reference_engine):
    with http_client(server, timeout=30) as http:
        tok = http.post("/tokenize", json={"prompt": "abc"}).json()
        assert tok["tokens"] == reference_engine.tokenizer.encode("abc") and tok["count"] == 3
        assert http.post("/detokenize", json={"tokens": tok["tokens"]}).json() == {"prompt": "abc"}
        assert http.get("/health").status_code == 200
        assert http.get("/ping").json() == http.post("/ping").json() == {"status": "ok"}   # vLLM's SageMaker route
        assert http.get("/version").json() == {"version": importlib.metadata.version("engine")}
        metrics = http.get("/metrics").text
    # vLLM's names, so that dashboards written for vLLM read them unchanged
    for name in ("vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc",
                 "vllm:prefix_cache_queries_total", "vllm:prefix_cache_hits_total", "vllm:prompt_tokens_total",
                 "vllm:generation_tokens_total", "vllm:num_preemptions_total",
                 "vllm:time_to_first_token_seconds_bucket", "vllm:inter_token_latency_seconds_bucket",
                 "vllm:e2e_request_latency_seconds_count"):
        assert name in metrics, name
    generated = [line for line in metrics.splitlines() if line.startswith("vllm:generation_tokens_total")]
    assert float(generated[0].split()[-1]) > 0
