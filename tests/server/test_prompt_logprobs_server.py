"""vLLM's prompt_logprobs and OpenAI's echo with logprobs on the real server: the values are the offline
engine's; the shapes are vLLM's (the completion choices' or the chat response's prompt_logprobs: None
first, then token id -> {logprob, rank, decoded_token}) and the legacy completions logprobs (the echoed
prompt's tokens first, None for the first one's logprob), streamed too; the official openai client as
lm-evaluation-harness calls it (echo, logprobs=1, max_tokens=1)."""
from __future__ import annotations

import json

import pytest

from engine.chat_template import render_chat
from engine.sampling_params import SamplingParams
from server_harness import MODEL_NAME, offline_outputs

PROMPTS = ["The quick brown fox", "1 2 3 4 5"]
ATOL = 1e-4


def reference(engine, prompts, **kw):
    return offline_outputs(engine, prompts, SamplingParams(temperature=0, **kw))


def check_vllm_shape(got: list, want, tokenizer, k: int) -> None:
    """`got` (JSON) is vLLM's prompt_logprobs of the offline RequestOutput `want` with top `k`."""
    ids = want.prompt_token_ids
    assert len(got) == len(ids) and got[0] is None
    for entry, lps, token in zip(got[1:], want.prompt_logprobs[1:], ids[1:]):
        assert list(entry) == [str(t) for t in lps]                    # the prompt token first, then the top k
        mine, rank = entry[str(token)], lps[token].rank
        assert mine["rank"] == rank and mine["decoded_token"] == tokenizer.decode([token])
        for t, value in lps.items():
            assert entry[str(t)]["logprob"] == pytest.approx(value.logprob, abs=ATOL)
            assert entry[str(t)]["rank"] == value.rank and entry[str(t)]["decoded_token"] == value.decoded_token
        assert sorted(e["rank"] for e in entry.values()) == sorted(set(range(1, k + 1)) | {rank})
        by_rank = sorted(entry.values(), key=lambda e: e["rank"])
        assert [e["logprob"] for e in by_rank] == sorted((e["logprob"] for e in by_rank), reverse=True)


def test_completions_prompt_logprobs_match_offline(http, reference_engine):
    """Two prompts, n = 2: each choice carries its prompt's list (vLLM's shape)."""
    want = offline_outputs(reference_engine, PROMPTS, SamplingParams(temperature=1.0, seed=9, n=2, max_tokens=4,
                                                                      prompt_logprobs=3))
    resp = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": PROMPTS, "max_tokens": 4,
                                              "temperature": 1.0, "seed": 9, "n": 2, "prompt_logprobs": 3})
    assert resp.status_code == 200, resp.text
    choices = resp.json()["choices"]
    assert [c["index"] for c in choices] == [0, 1, 2, 3]
    for choice in choices:
        ref = want[choice["index"] // 2]
        check_vllm_shape(choice["prompt_logprobs"], ref, reference_engine.tokenizer, 3)
        assert choice["text"] == ref.outputs[choice["index"] % 2].text and choice["logprobs"] is None


def test_chat_prompt_logprobs_match_offline(http, reference_engine):
    """Chat: the response's prompt_logprobs (vLLM puts them beside the choices) over the templated prompt."""
    messages = [{"role": "user", "content": "Name a river."}]
    ids = render_chat(reference_engine.tokenizer, messages, True)
    want = reference(reference_engine, [ids], max_tokens=3, prompt_logprobs=0)[0]
    resp = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": messages, "max_tokens": 3,
                                                   "temperature": 0, "prompt_logprobs": 0})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    check_vllm_shape(body["prompt_logprobs"], want, reference_engine.tokenizer, 0)
    assert "prompt_logprobs" not in body["choices"][0]
    assert body["choices"][0]["message"]["content"] == want.outputs[0].text


def echo_logprobs(http, prompt, max_tokens: int, logprobs: int, **extra) -> dict:
    resp = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens,
                                              "temperature": 0, "echo": True, "logprobs": logprobs, **extra})
    assert resp.status_code == 200, resp.text
    return resp.json()


def check_echoed(lp: dict, want, tokenizer, k: int, num_generated: int) -> None:
    """OpenAI's legacy logprobs over the prompt's tokens, then the first `num_generated` generated ones."""
    gen = want.outputs[0]
    ids = want.prompt_token_ids + gen.token_ids[:num_generated]
    entries = want.prompt_logprobs + gen.logprobs[:num_generated]
    assert lp["tokens"] == [tokenizer.decode([t]) for t in ids]
    assert lp["token_logprobs"][0] is None and lp["top_logprobs"][0] is None
    assert lp["token_logprobs"][1:] == pytest.approx([e[t].logprob for e, t in zip(entries[1:], ids[1:])], abs=ATOL)
    for top, entry in zip(lp["top_logprobs"][1:], entries[1:]):
        assert 1 <= len(top) <= k + 1
        assert list(top.values()) == sorted(top.values(), reverse=True)
        assert set(top) <= {tokenizer.decode([t]) for t in entry}
    offsets = [0]
    for token in lp["tokens"][:-1]:
        offsets.append(offsets[-1] + len(token))
    assert lp["text_offset"] == offsets


def test_echo_with_logprobs_covers_the_prompt(http, reference_engine):
    want = reference(reference_engine, PROMPTS[:1], max_tokens=3, logprobs=2, prompt_logprobs=2)[0]
    choice = echo_logprobs(http, PROMPTS[0], 3, 2)["choices"][0]
    assert choice["text"] == PROMPTS[0] + want.outputs[0].text
    check_echoed(choice["logprobs"], want, reference_engine.tokenizer, 2, 3)
    check_vllm_shape(choice["prompt_logprobs"], want, reference_engine.tokenizer, 2)   # vLLM returns them too


def test_echo_with_more_prompt_logprobs_shows_logprobs_alternatives(http, reference_engine):
    """prompt_logprobs 4 with logprobs 1: the echoed positions show the token and 1 alternative at most
    (vLLM's cap), prompt_logprobs all 4."""
    want = reference(reference_engine, PROMPTS[1:], max_tokens=2, logprobs=1, prompt_logprobs=4)[0]
    choice = echo_logprobs(http, PROMPTS[1], 2, 1, prompt_logprobs=4)["choices"][0]
    check_echoed(choice["logprobs"], want, reference_engine.tokenizer, 1, 2)
    check_vllm_shape(choice["prompt_logprobs"], want, reference_engine.tokenizer, 4)


def test_openai_client_loglikelihood_as_lm_eval(client, reference_engine):
    """lm-evaluation-harness's loglikelihood request: token-id prompts (context + continuation), echo,
    logprobs=1, max_tokens=1; the continuation's logprob is the sum of token_logprobs over its tokens
    and it is greedy when each is its position's top token."""
    tok = reference_engine.tokenizer
    contexts = [tok.encode("Paris is in"), tok.encode("2 + 2 =")]
    continuations = [tok.encode(" France"), tok.encode(" 4")]
    prompts = [c + x for c, x in zip(contexts, continuations)]
    want = reference(reference_engine, prompts, max_tokens=1, logprobs=1, prompt_logprobs=1)
    resp = client.completions.create(model=MODEL_NAME, prompt=prompts, max_tokens=1, temperature=0, echo=True,
                                     logprobs=1)
    for choice, ref, context, prompt in zip(resp.choices, want, contexts, prompts):
        lp = choice.logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.top_logprobs) == len(prompt) + 1
        ctxlen = len(context)
        got = sum(lp.token_logprobs[ctxlen:-1])
        expected = sum(ref.prompt_logprobs[p][prompt[p]].logprob for p in range(ctxlen, len(prompt)))
        assert got == pytest.approx(expected, abs=1e-3)
        is_greedy = all(max(top, key=top.get) == token for token, top in
                        zip(lp.tokens[ctxlen:-1], lp.top_logprobs[ctxlen:-1]))
        assert is_greedy == all(ref.prompt_logprobs[p][prompt[p]].rank == 1 for p in range(ctxlen, len(prompt)))


def test_echo_with_max_tokens_0_returns_the_prompt_alone(http, reference_engine):
    """vLLM's echo with max_tokens 0: the prompt and its logprobs, nothing generated; without echo a 400."""
    want = reference(reference_engine, PROMPTS[:1], max_tokens=1, logprobs=2, prompt_logprobs=2)[0]
    choice = echo_logprobs(http, PROMPTS[0], 0, 2)["choices"][0]
    assert choice["text"] == PROMPTS[0] and choice["finish_reason"] == "length"
    check_echoed(choice["logprobs"], want, reference_engine.tokenizer, 2, 0)
    chunks = stream_choices(http, PROMPTS[0], 0, 2, n=3, temperature=1.0)
    assert sorted((c["index"], c["text"], c["finish_reason"]) for c in chunks) == [
        (i, PROMPTS[0], "length") for i in range(3)]
    assert chunks[0]["logprobs"]["tokens"] == choice["logprobs"]["tokens"]
    resp = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 0})
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "max_tokens"


def stream_choices(http, prompt, max_tokens: int, logprobs: int, **extra) -> list[dict]:
    body = {"model": MODEL_NAME, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "echo": True,
            "logprobs": logprobs, "stream": True, **extra}
    with http.stream("POST", "/v1/completions", json=body) as resp:
        assert resp.status_code == 200
        lines = [line[len("data: "):] for line in resp.iter_lines() if line.startswith("data: ")]
    assert lines[-1] == "[DONE]"
    return [choice for line in lines[:-1] for choice in json.loads(line)["choices"]]


def test_streamed_echo_with_logprobs_equals_the_response(http):
    """Streamed, each choice's first chunk is its echoed prompt with the prompt's logprobs; the chunks'
    text and logprobs add up to the response's."""
    whole = echo_logprobs(http, PROMPTS, 5, 2, n=2, temperature=1.0, seed=5)["choices"]
    chunks = stream_choices(http, PROMPTS, 5, 2, n=2, temperature=1.0, seed=5)
    for choice in whole:
        mine = [c for c in chunks if c["index"] == choice["index"]]
        assert mine[0]["text"] == PROMPTS[choice["index"] // 2]
        assert mine[0]["logprobs"]["token_logprobs"][0] is None and "prompt_logprobs" not in mine[0]
        assert "".join(c["text"] for c in mine) == choice["text"]
        streamed = {key: sum((c["logprobs"][key] for c in mine), []) for key in choice["logprobs"]}
        assert streamed["tokens"] == choice["logprobs"]["tokens"]
        assert streamed["text_offset"] == choice["logprobs"]["text_offset"]
        assert streamed["token_logprobs"][1:] == pytest.approx(choice["logprobs"]["token_logprobs"][1:], abs=ATOL)
        for a, b in zip(streamed["top_logprobs"][1:], choice["logprobs"]["top_logprobs"][1:]):
            assert a.keys() == b.keys() and list(a.values()) == pytest.approx(list(b.values()), abs=ATOL)
        assert mine[-1]["finish_reason"] == choice["finish_reason"]
