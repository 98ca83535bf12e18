"""vLLM's chat extras add_generation_prompt and continue_final_message: the last (assistant) message is
left open and the model goes on with it, as transformers renders it; both at once is vLLM's 400."""
from __future__ import annotations

from engine.sampling_params import SamplingParams
from server_harness import MODEL_NAME, offline_generate

MESSAGES = [{"role": "user", "content": "Name a colour"}, {"role": "assistant", "content": "Sure: the colour"}]
OPEN = {"add_generation_prompt": False, "continue_final_message": True}


def expected_ids(server) -> list[int]:
    tok = server.async_engine.tokenizer
    text = tok.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=False, continue_final_message=True)
    assert text.endswith("Sure: the colour")                 # no end-of-turn after the open message
    return tok.encode(text, add_special_tokens=False)


def test_the_model_goes_on_with_the_final_message(server, http, reference_engine):
    ids = expected_ids(server)
    assert http.post("/tokenize", json={"messages": MESSAGES, **OPEN}).json()["tokens"] == ids
    resp = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 6,
                                                   "temperature": 0, **OPEN})
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == len(ids)
    (ref,) = offline_generate(reference_engine, [ids], SamplingParams(max_tokens=6, temperature=0))
    assert resp.json()["choices"][0]["message"]["content"] == ref[0].text


def test_both_at_once_is_a_400(http):
    resp = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MESSAGES,
                                                   "continue_final_message": True})
    assert resp.status_code == 400
    error = resp.json()["error"]
    assert "Cannot set both `continue_final_message` and `add_generation_prompt` to True." in error["message"]
