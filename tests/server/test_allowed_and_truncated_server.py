"""vLLM's allowed_token_ids and truncate_prompt_tokens extras on /v1/completions and /v1/chat/completions:
the answers are the offline engine's (only allowed tokens; a truncated prompt answers as its last k tokens,
its usage counts those), through the engine's thread and its process; bad values are a 400 in the OpenAI
error shape naming the field (vLLM's messages), before or from the engine."""
from __future__ import annotations

import pytest

from engine.engine_process import ProcessAsyncEngine
from engine.sampling_params import SamplingParams
from server_harness import (MODEL_NAME, ServerThread, assert_400, engine_config, first_text, http_client,
                            offline_generate, post_to, posted_prompt_ids)

ALLOWED = [7, 33, 101, 250]
TEXT = "The quick brown fox jumps over the lazy dog"
ENDPOINTS = ["chat", "completions"]


def post(http, endpoint: str, **body):
    """A request of 6 tokens (greedy unless `body` says otherwise) with `body`'s extra fields."""
    base = {"model": MODEL_NAME, "max_tokens": 6, "temperature": 0, "ignore_eos": True}
    return post_to(http, endpoint, TEXT, **{**base, **body})


def answer(resp) -> tuple[str, int]:
    """(the first choice's text, the prompt's token count)."""
    return first_text(resp), resp.json()["usage"]["prompt_tokens"]


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_allowed_token_ids_answer_is_the_offline_engines(http, reference_engine, endpoint):
    ids = posted_prompt_ids(reference_engine.tokenizer, endpoint, TEXT)
    for extra in (dict(temperature=0), dict(temperature=1.0, seed=5)):
        params = SamplingParams(max_tokens=6, ignore_eos=True, allowed_token_ids=ALLOWED, **extra)
        want = offline_generate(reference_engine, [ids], params)[0][0]
        assert set(want.token_ids) <= set(ALLOWED)
        assert answer(post(http, endpoint, allowed_token_ids=ALLOWED, **extra))[0] == want.text


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_truncated_prompt_answers_as_its_last_tokens(http, reference_engine, endpoint):
    ids = posted_prompt_ids(reference_engine.tokenizer, endpoint, TEXT)
    want = offline_generate(reference_engine, [ids[-5:]], SamplingParams(temperature=0, max_tokens=6,
                                                                          ignore_eos=True))[0][0]
    assert answer(post(http, endpoint, truncate_prompt_tokens=5)) == (want.text, 5)
    assert answer(post(http, endpoint, truncate_prompt_tokens=-1)) == answer(post(http, endpoint))
    assert answer(post(http, endpoint))[1] == len(ids)


def test_truncation_lets_a_long_prompt_in(http):
    long_prompt = list(range(40, 240))                   # 200 tokens > max_model_len 128
    assert post(http, "completions", prompt=long_prompt).status_code == 400
    assert answer(post(http, "completions", prompt=long_prompt, truncate_prompt_tokens=100))[1] == 100


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("field, value, message", [
    ("allowed_token_ids", [], "allowed_token_ids must not be empty"),
    ("allowed_token_ids", [5, -1], "allowed_token_ids must be token ids (integers >= 0)"),
    ("allowed_token_ids", [5, 10**6], "allowed_token_ids must be token ids in [0, "),      # from the engine
    ("allowed_token_ids", ["a"], "allowed_token_ids"),
    ("truncate_prompt_tokens", 0, "truncate_prompt_tokens must be an integer >= 1 or -1, got 0"),
    ("truncate_prompt_tokens", -2, "truncate_prompt_tokens must be an integer >= 1 or -1, got -2"),
    ("truncate_prompt_tokens", 129, "truncate_prompt_tokens value (129) is greater than max_model_len (128). "
                                    "Please, select a smaller truncation size."),
])
def test_bad_values_are_400_naming_the_field(http, endpoint, field, value, message):
    assert_400(post(http, endpoint, **{field: value}), field, message)


def test_through_the_engine_process(tiny_model_path, http):
    with ServerThread(engine_config(tiny_model_path), engine_cls=ProcessAsyncEngine) as process_server:
        with http_client(process_server) as process_http:
            for endpoint in ENDPOINTS:
                extras = dict(allowed_token_ids=ALLOWED, truncate_prompt_tokens=5)
                assert answer(post(process_http, endpoint, **extras)) == answer(post(http, endpoint, **extras))
            assert_400(post(process_http, "chat", allowed_token_ids=[10**6]), "allowed_token_ids",
                       "allowed_token_ids must be token ids in [0, ")
