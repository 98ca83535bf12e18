"""vLLM's structured outputs on /v1/completions and /v1/chat/completions, the choice kind: structured_outputs
{"choice": [...]} and the older guided_choice extra answer as the offline engine does (one of the choices),
through the engine's thread and its process, streamed too, as content under a reasoning parser; what vLLM
accepts beside them is served; the other kinds, unknown keys and bad choice lists are a 400 naming the
field, before anything reaches the engine."""
from __future__ import annotations

import json

import pytest

from engine.engine_process import ProcessAsyncEngine
from engine.sampling_params import SamplingParams
from engine.structured_outputs import StructuredOutputsParams
from server_harness import (MODEL_NAME, ServerThread, assert_400, engine_config, first_text, http_client,
                            offline_generate, post_to, posted_prompt_ids)

CHOICES = ["yes", "no", "maybe so"]
TEXT = "Is the sky blue?"
ENDPOINTS = ["chat", "completions"]
FIELDS = {"structured_outputs": {"choice": CHOICES}, "guided_choice": CHOICES}


def post(http, endpoint: str, **body):
    return post_to(http, endpoint, TEXT, **{"model": MODEL_NAME, "max_tokens": 16, "temperature": 1.0, "seed": 5,
                                            **body})


def text_of(resp) -> str:
    """The first choice's text, which ended on EOS."""
    text = first_text(resp)
    assert resp.json()["choices"][0]["finish_reason"] == "stop"
    return text


@pytest.mark.parametrize("field", list(FIELDS))
@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_answer_is_the_offline_engines_choice(http, reference_engine, endpoint, field):
    ids = posted_prompt_ids(reference_engine.tokenizer, endpoint, TEXT)
    params = SamplingParams(max_tokens=16, temperature=1.0, seed=5,
                            structured_outputs=StructuredOutputsParams(choice=CHOICES))
    want = offline_generate(reference_engine, [ids], params)[0][0].text
    assert want in CHOICES
    assert text_of(post(http, endpoint, **{field: FIELDS[field]})) == want


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_what_vllm_accepts_beside_a_choice_is_served(http, endpoint):
    """vLLM's grammar options and guided_decoding_backend change nothing for a choice; structured_outputs
    wins over guided_choice; allowed_token_ids narrow the choices."""
    want = text_of(post(http, endpoint, guided_choice=CHOICES))
    options = {"choice": CHOICES, "disable_fallback": True, "whitespace_pattern": " "}
    assert text_of(post(http, endpoint, structured_outputs=options)) == want
    assert text_of(post(http, endpoint, guided_choice=CHOICES, guided_decoding_backend="xgrammar")) == want
    assert text_of(post(http, endpoint, guided_choice=["x", "y"], structured_outputs={"choice": CHOICES})) == want
    assert text_of(post(http, endpoint, guided_choice=CHOICES, allowed_token_ids=[ord(c) for c in "no"])) == "no"


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_streamed_answer_adds_up_to_a_choice(http, endpoint):
    whole = text_of(post(http, endpoint, guided_choice=CHOICES))
    resp = post(http, endpoint, guided_choice=CHOICES, stream=True)
    assert resp.status_code == 200
    chunks = [json.loads(line[6:]) for line in resp.text.splitlines() if line.startswith("data: {")]
    deltas = [c["choices"][0]["delta"].get("content") if endpoint == "chat" else c["choices"][0]["text"]
              for c in chunks if c["choices"]]
    assert "".join(d for d in deltas if d) == whole


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("body, param, message", [
    (dict(structured_outputs={"json": {"type": "object"}}), "structured_outputs",
     "structured_outputs.json is not supported"),
    (dict(structured_outputs={"regex": "a+"}), "structured_outputs", "structured_outputs.regex is not supported"),
    (dict(structured_outputs={"choices": ["a"]}), "structured_outputs", "unknown keys ['choices']"),
    (dict(structured_outputs=["a"]), "structured_outputs", "must be an object"),
    (dict(structured_outputs={"choice": []}), "structured_outputs", "structured_outputs.choice must be a non-empty"),
    (dict(guided_choice=["a", ""]), "guided_choice", "structured_outputs.choice must be a non-empty"),
    (dict(guided_choice="yes"), "guided_choice", "structured_outputs.choice must be a non-empty"),
    (dict(guided_choice=["a"], structured_outputs={"regex": "a"}), "structured_outputs", "regex is not supported"),
])
def test_bad_values_are_400_naming_the_field(http, engine_calls, endpoint, body, param, message):
    assert_400(post(http, endpoint, **body), param, message)
    assert engine_calls == []


def test_a_choice_is_content_under_a_reasoning_parser(tiny_model_path):
    """The choice starts at the first token, so the answer is all content (deepseek_r1's parser would call
    an answer without tags all thinking)."""
    with ServerThread(engine_config(tiny_model_path), reasoning_parser="deepseek_r1") as reasoning_server:
        with http_client(reasoning_server) as reasoning_http:
            for stream in (False, True):
                resp = post(reasoning_http, "chat", guided_choice=CHOICES, stream=stream)
                assert resp.status_code == 200, resp.text
                if not stream:
                    message = resp.json()["choices"][0]["message"]
                    assert message["content"] in CHOICES and message["reasoning_content"] is None
                    continue
                deltas = [json.loads(line[6:])["choices"] for line in resp.text.splitlines()
                          if line.startswith("data: {")]
                content = "".join(c[0]["delta"].get("content") or "" for c in deltas if c)
                assert content == message["content"]
                assert not any(c[0]["delta"].get("reasoning_content") for c in deltas if c)


def test_through_the_engine_process(tiny_model_path, http):
    with ServerThread(engine_config(tiny_model_path), engine_cls=ProcessAsyncEngine) as process_server:
        with http_client(process_server) as process_http:
            for endpoint in ENDPOINTS:
                assert text_of(post(process_http, endpoint, guided_choice=CHOICES)) == \
                    text_of(post(http, endpoint, guided_choice=CHOICES))
