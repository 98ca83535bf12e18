"""The server takes the model's generation_config.json sampling fields as defaults for the fields a request
leaves unset (vLLM's --generation-config auto); what a request sets wins; completions keep max_tokens 16."""
from __future__ import annotations

from types import SimpleNamespace

import httpx
import pytest
from transformers import GenerationConfig

from engine.engine_process import ProcessAsyncEngine
from engine.sampling_params import RequestOutputKind, SamplingParams
from server.protocol import ChatCompletionRequest, CompletionRequest
from server.serving import Serving
from server_harness import MODEL_NAME, ServerThread, engine_config, write_tiny_qwen3
from tests.engine.test_generation_defaults import spy_on_add_request

MODEL_DEFAULTS = {"temperature": 0.6, "top_p": 0.95, "top_k": 20, "max_tokens": 7}
MESSAGES = [{"role": "user", "content": "Hello there"}]


@pytest.fixture(scope="module")
def model_with_defaults(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("server-tiny-qwen3-gen-defaults")
    write_tiny_qwen3(path)
    config = GenerationConfig.from_pretrained(path)
    config.update(do_sample=True, temperature=0.6, top_p=0.95, top_k=20, max_new_tokens=7)
    config.save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def server(model_with_defaults, start_server):
    return start_server(engine_config(model_with_defaults))


@pytest.fixture
def seen_params(server, monkeypatch) -> list[SamplingParams]:
    """The SamplingParams the engine receives for each request."""
    return spy_on_add_request(monkeypatch, server.async_engine.engine)


def test_the_client_sees_the_models_defaults(server):
    assert server.async_engine.default_sampling_fields == MODEL_DEFAULTS


def test_chat_without_sampling_fields_gets_the_models_defaults(client, seen_params):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 7 and resp.choices[0].finish_reason == "length"
    (params,) = seen_params
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.6, 0.95, 20, 7)
    assert params.min_p == 0.0 and params.repetition_penalty == 1.0       # not in the file: engine defaults


def test_fields_the_request_sets_win(client, seen_params):
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, temperature=0, max_tokens=12,
                                          extra_body={"ignore_eos": True, "top_k": 5})
    assert resp.usage.completion_tokens == 12
    (params,) = seen_params
    assert (params.temperature, params.top_k, params.max_tokens) == (0, 5, 12)
    assert params.top_p == 0.95                                             # left unset: the model's


def test_completions_keep_their_max_tokens_default_of_16(client, seen_params):
    resp = client.completions.create(model=MODEL_NAME, prompt="Hello", extra_body={"ignore_eos": True})
    assert resp.usage.completion_tokens == 16
    assert (seen_params[0].temperature, seen_params[0].max_tokens) == (0.6, 16)


def test_completions_with_max_tokens_null_get_the_models_max_tokens(server, seen_params):
    body = {"model": MODEL_NAME, "prompt": "Hello", "max_tokens": None, "ignore_eos": True}
    resp = httpx.post(f"{server.base_url}/v1/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 7 and seen_params[0].max_tokens == 7


def _serving(defaults: dict, max_model_len: int = 20) -> Serving:
    engine = SimpleNamespace(tokenizer=None, max_model_len=max_model_len, default_sampling_fields=defaults,
                             config=SimpleNamespace(max_logprobs=20))
    return Serving(engine, MODEL_NAME, metrics=None)


def test_the_models_max_tokens_is_capped_by_the_room_left():
    serving = _serving(MODEL_DEFAULTS, max_model_len=20)
    assert serving.default_max_tokens([1] * 5) == 7
    assert serving.default_max_tokens([1] * 16) == 4          # 20 - 16 < 7
    assert _serving({}).default_max_tokens([1] * 5) == 15     # no model default: all the room


def test_engine_defaults_when_the_model_gives_none():
    req = ChatCompletionRequest(messages=MESSAGES)
    # a request that is not streamed asks for its final output only
    assert _serving({}).sampling_params(req, 9, None) == SamplingParams(max_tokens=9,
                                                                        output_kind=RequestOutputKind.FINAL_ONLY)
    req = CompletionRequest(prompt="x", top_p=0.5)
    params = _serving(MODEL_DEFAULTS).sampling_params(req, 16, None)
    assert (params.temperature, params.top_p, params.top_k, params.max_tokens) == (0.6, 0.5, 20, 16)


def test_engine_process_passes_the_defaults_to_the_server(model_with_defaults):
    with ServerThread(engine_config(model_with_defaults), engine_cls=ProcessAsyncEngine) as srv:
        assert srv.async_engine.default_sampling_fields == MODEL_DEFAULTS
        body = {"model": MODEL_NAME, "messages": MESSAGES, "ignore_eos": True}
        resp = httpx.post(f"{srv.base_url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 7
    assert resp.json()["choices"][0]["finish_reason"] == "length"


def test_generation_config_vllm_keeps_the_engine_defaults(model_with_defaults):
    with ServerThread(engine_config(model_with_defaults, generation_config="vllm")) as srv:
        assert srv.async_engine.default_sampling_fields == {}
        body = {"model": MODEL_NAME, "messages": MESSAGES, "temperature": 0, "ignore_eos": True}
        resp = httpx.post(f"{srv.base_url}/v1/chat/completions", json=body, timeout=60)
    assert resp.status_code == 200, resp.text
    usage = resp.json()["usage"]
    assert usage["completion_tokens"] == 128 - usage["prompt_tokens"]       # all the room of max_model_len
