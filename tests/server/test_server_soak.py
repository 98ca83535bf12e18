"""A random soak of the server: waves of concurrent chat and completion requests, streamed or not, with
the sampling extras at random (bad_words, guided_choice, logprobs, n = 2, stop, penalties,
allowed_token_ids, prompt_logprobs), some streams dropped by their client mid-way, a KV pool small
enough to preempt; the engine on the server's thread and in its own process. After every wave the engine
is idle with every block free (and, on the thread, no more block-table rows than max_num_seqs held);
every answer that was read whole keeps its request's rules."""
from __future__ import annotations

import asyncio
import json
import random

import httpx
import pytest

from engine.async_engine import AsyncEngine
from engine.engine_process import ProcessAsyncEngine
from server_harness import MODEL_NAME, engine_config

CHOICES = ["yes", "no way"]
MAX_NUM_SEQS = 8
FEATURES = {"plain": {}, "bad_words": {"bad_words": ["a", "e"]}, "choice": {"guided_choice": CHOICES},
            "logprobs": {"logprobs": 2}, "n": {"n": 2, "temperature": 1.0}, "stop": {"stop": ["o"]},
            "penalty": {"repetition_penalty": 1.3, "presence_penalty": 0.5},
            "allowed": {"allowed_token_ids": [ord(c) for c in "xyz"]}, "prompt_logprobs": {"prompt_logprobs": 1}}


@pytest.fixture(scope="module", params=[AsyncEngine, ProcessAsyncEngine], ids=["thread", "process"])
def server(request, tiny_model_path, start_server):
    return start_server(engine_config(tiny_model_path, num_kv_blocks=24, max_num_seqs=MAX_NUM_SEQS,
                                      max_num_batched_tokens=64), engine_cls=request.param)


def random_request(rng: random.Random) -> tuple[str, str, dict]:
    """(endpoint, feature, body)."""
    endpoint, feature = rng.choice(["chat", "completions"]), rng.choice(sorted(FEATURES))
    body = {"model": MODEL_NAME, "max_tokens": rng.randint(1, 20), "temperature": rng.choice([0, 1.0]),
            "seed": rng.randrange(100), "stream": feature != "prompt_logprobs" and rng.random() < 0.5,
            **FEATURES[feature]}
    if feature == "logprobs" and endpoint == "chat":
        body.update(logprobs=True, top_logprobs=2)
    text = " ".join(rng.choice(["sky", "tea", "one", "two", "blue"]) for _ in range(rng.randint(1, 12)))
    body.update({"messages": [{"role": "user", "content": text}]} if endpoint == "chat" else {"prompt": text})
    return endpoint, feature, body


def check_text(feature: str, text: str, finish: str) -> None:
    if feature == "bad_words":
        assert "a" not in text and "e" not in text, text
    if feature == "choice":
        assert text in CHOICES if finish == "stop" else any(c.startswith(text) for c in CHOICES), text
    if feature == "allowed":
        assert set(text) <= set("xyz"), text


async def call(client: httpx.AsyncClient, endpoint: str, feature: str, body: dict, drop_after: int | None):
    """Send one request; check what it answers (all of it, or the first chunks of a dropped stream)."""
    path = "/v1/chat/completions" if endpoint == "chat" else "/v1/completions"
    if not body["stream"]:
        resp = await client.post(path, json=body)
        assert resp.status_code == 200, resp.text
        choices = resp.json()["choices"]
        assert len(choices) == body.get("n", 1)
        for c in choices:
            check_text(feature, c["message"]["content"] if endpoint == "chat" else c["text"], c["finish_reason"])
        return
    texts, finish = {}, {}
    async with client.stream("POST", path, json=body) as resp:
        assert resp.status_code == 200
        async for line in resp.aiter_lines():
            if drop_after is not None and len(texts) + sum(map(len, texts.values())) >= drop_after:
                return                              # leaving the block drops the connection mid-stream
            if not line.startswith("data: {"):
                continue
            for c in json.loads(line[6:])["choices"]:
                piece = c["delta"].get("content") if endpoint == "chat" else c["text"]
                texts[c["index"]] = texts.get(c["index"], "") + (piece or "")
                finish[c["index"]] = c["finish_reason"] or finish.get(c["index"])
    for index, text in texts.items():
        check_text(feature, text, finish[index])


def test_random_waves_leave_the_engine_clean(server):
    rng = random.Random(5)
    engine = getattr(server.async_engine, "engine", None)       # the thread engine's LLMEngine

    async def wave():
        async with httpx.AsyncClient(base_url=server.base_url, timeout=60) as client:
            requests = [random_request(rng) for _ in range(24)]
            drops = [rng.randint(1, 6) if body["stream"] and rng.random() < 0.3 else None for _, _, body in requests]
            await asyncio.gather(*(call(client, *r, d) for r, d in zip(requests, drops)))

    for number in range(4):
        asyncio.run(wave())
        stats = server.wait_idle()
        assert stats.num_running == stats.num_waiting == 0, number
        assert stats.num_free_blocks == stats.num_total_blocks, number
        assert engine is None or len(engine.runner.inputs.rows) <= MAX_NUM_SEQS
    assert server.stats().num_preemptions > 0
