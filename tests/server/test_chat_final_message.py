"""vLLM's chat extras add_generation_prompt, continue_final_message and echo: the last (assistant) message
is left open and the model goes on with it, as transformers renders it; both at once is vLLM's 400; echo
starts the answer with that message's text; without the generation prompt the answer takes the last
message's role; content parts are joined by newlines."""
from __future__ import annotations

import json

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


def chat(http, **fields):
    resp = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 6, "temperature": 0, **fields})
    assert resp.status_code == 200, resp.text
    return resp.json()


def streamed(http, **fields) -> list[dict]:
    body = {"model": MODEL_NAME, "max_tokens": 6, "temperature": 0, "stream": True, **fields}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        assert resp.status_code == 200, resp.read()
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    return [json.loads(event)["choices"][0] for event in events[:-1]]


def test_echo_starts_the_answer_with_the_final_message(server, http, reference_engine):
    (ref,) = offline_generate(reference_engine, [expected_ids(server)], SamplingParams(max_tokens=6, temperature=0))
    plain = chat(http, messages=MESSAGES, **OPEN)["choices"][0]["message"]
    echoed = chat(http, messages=MESSAGES, echo=True, **OPEN)["choices"][0]["message"]
    assert plain == {**echoed, "content": ref[0].text} and echoed["role"] == "assistant"
    assert echoed["content"] == "Sure: the colour" + ref[0].text
    assert "".join(c["delta"].get("content") or "" for c in streamed(http, messages=MESSAGES, echo=True, **OPEN)) \
        == "Sure: the colour" + ref[0].text
    choices = streamed(http, messages=MESSAGES, echo=True, n=2, temperature=1.0, seed=3, **OPEN)
    assert [(c["index"], c["delta"].get("role"), c["delta"]["content"]) for c in choices[:4]] == [
        (0, "assistant", ""), (1, "assistant", ""), (0, None, "Sure: the colour"), (1, None, "Sure: the colour")]
    assert sum(c["finish_reason"] is not None for c in choices) == 2


def test_echo_needs_the_final_message_in_the_answers_role(http):
    """With the generation prompt the answer is the assistant's, so a final user message is not echoed;
    without it the answer takes the final message's role (vLLM's), and echo repeats it."""
    user_last = [{"role": "user", "content": "Name a colour"}]
    assert chat(http, messages=user_last)["choices"][0]["message"] == chat(http, messages=user_last, echo=True)[
        "choices"][0]["message"]
    message = chat(http, messages=user_last, echo=True, add_generation_prompt=False)["choices"][0]["message"]
    assert message["role"] == "user" and message["content"].startswith("Name a colour")
    assert streamed(http, messages=user_last, add_generation_prompt=False)[0]["delta"]["role"] == "user"


def test_content_parts_render_joined_by_newlines(server, http):
    parts = [{"role": "user", "content": [{"type": "text", "text": "Name"}, {"type": "text", "text": "a colour"}]}]
    joined = [{"role": "user", "content": "Name\na colour"}]
    assert http.post("/tokenize", json={"messages": parts}).json()["tokens"] == \
        http.post("/tokenize", json={"messages": joined}).json()["tokens"]
    image = [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x.png"}}]}]
    resp = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": image})
    assert resp.status_code == 400
    assert resp.json()["error"]["message"] == "only text content parts are supported, got 'image_url'"
