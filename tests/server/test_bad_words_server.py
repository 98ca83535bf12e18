"""vLLM's bad_words extra on /v1/completions and /v1/chat/completions: the answers are the offline engine's
(which never holds the words), through the engine's thread and its process; a bad value is a 400 in the
OpenAI error shape naming the field."""
from __future__ import annotations

import pytest

from engine.engine_process import ProcessAsyncEngine
from engine.sampling_params import SamplingParams
from server_harness import (MODEL_NAME, ServerThread, assert_400, engine_config, first_text, http_client,
                            offline_generate, post_to, posted_prompt_ids)

LETTERS = [ord(c) for c in "abc"]             # the tiny model's byte tokenizer: one token per letter
TEXT = "The quick brown fox"
ENDPOINTS = ["chat", "completions"]


def post(http, endpoint: str, **body):
    """12 tokens of the letters a-c (seeded temperature 1 unless `body` says otherwise)."""
    base = {"model": MODEL_NAME, "max_tokens": 12, "temperature": 1.0, "seed": 3, "ignore_eos": True,
            "allowed_token_ids": LETTERS}
    return post_to(http, endpoint, TEXT, **{**base, **body})


@pytest.mark.parametrize("endpoint", ENDPOINTS)
def test_answer_is_the_offline_engines_and_holds_no_bad_word(http, reference_engine, endpoint):
    ids = posted_prompt_ids(reference_engine.tokenizer, endpoint, TEXT)
    plain = first_text(post(http, endpoint))
    words = [plain[2:4], "c"]                           # a word the plain answer holds, and a letter
    params = SamplingParams(max_tokens=12, temperature=1.0, seed=3, ignore_eos=True, allowed_token_ids=LETTERS,
                            bad_words=words)
    want = offline_generate(reference_engine, [ids], params)[0][0].text
    got = first_text(post(http, endpoint, bad_words=words))
    assert got == want and words[0] not in got and "c" not in got and got != plain


@pytest.mark.parametrize("endpoint", ENDPOINTS)
@pytest.mark.parametrize("value, message", [
    ([" "], "bad_words must be strings with a character other than whitespace"),
    ("ab", "bad_words"),                                # a list, as vLLM's
    ([3], "bad_words"),
])
def test_bad_values_are_400_naming_the_field(http, endpoint, value, message):
    assert_400(post(http, endpoint, bad_words=value), "bad_words", message)


def test_through_the_engine_process(tiny_model_path, http):
    with ServerThread(engine_config(tiny_model_path), engine_cls=ProcessAsyncEngine) as process_server:
        with http_client(process_server) as process_http:
            for endpoint in ENDPOINTS:
                extras = dict(bad_words=["ab", "c"])
                assert first_text(post(process_http, endpoint, **extras)) == first_text(post(http, endpoint, **extras))
