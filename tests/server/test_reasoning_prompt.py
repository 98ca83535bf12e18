"""The reasoning parsers and a think block the prompt already opened or closed (vLLM's
prompt_is_reasoning_end): Qwen3 with enable_thinking false ends its prompt with an empty, closed
block, so the answer is all content, whatever the parser; a template that opens the block
(Qwen3-Thinking-2507, DeepSeek-R1: `...assistant\n<think>\n`) makes the answer start in reasoning."""
from __future__ import annotations

import json
import random

import pytest

from server.reasoning import (PROMPT_CLOSED, PROMPT_OPEN, ReasoningSplit, ReasoningStream, prompt_think_state,
                              split_reasoning)
from server_harness import MODEL_NAME, engine_config

PARSERS = ["qwen3", "deepseek_r1"]


@pytest.mark.parametrize("tail, state", [
    ("<|im_start|>assistant\n<think>\n\n</think>\n\n", PROMPT_CLOSED),
    ("<|im_start|>assistant\n<think>\n", PROMPT_OPEN),
    ("<｜Assistant｜><think>", PROMPT_OPEN),
    ("<|im_start|>assistant\n", None),
    ("user said </think> then\n<|im_start|>assistant\n", None),     # a tag earlier in the prompt is not the state
])
def test_the_prompt_tail_says_whether_the_template_opened_or_closed_the_block(tail, state):
    assert prompt_think_state(tail) == state


@pytest.mark.parametrize("parser", PARSERS)
def test_after_a_closed_block_the_answer_is_all_content(parser):
    assert split_reasoning(parser, "The answer.", prompt_state=PROMPT_CLOSED) == ReasoningSplit("", "The answer.")
    assert split_reasoning(parser, "a <think>b</think> c", prompt_state=PROMPT_CLOSED) == ReasoningSplit(
        "", "a <think>b</think> c")


@pytest.mark.parametrize("parser", PARSERS)
def test_after_an_open_block_the_answer_starts_in_reasoning(parser):
    assert split_reasoning(parser, "plan</think>\n\nanswer", prompt_state=PROMPT_OPEN) == ReasoningSplit(
        "plan", "\n\nanswer")
    assert split_reasoning(parser, "cut short", prompt_state=PROMPT_OPEN) == ReasoningSplit("cut short", "")


@pytest.mark.parametrize("parser", PARSERS)
@pytest.mark.parametrize("state", [PROMPT_OPEN, PROMPT_CLOSED, None])
def test_random_streams_add_up_to_the_whole_split(parser, state):
    rng = random.Random(1)
    pieces = ["<think>", "</think>", "<", "</", "<th", "think>", "x", "\n", " "]
    for _ in range(300):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(0, 10)))
        cuts = sorted(set(rng.sample(range(len(text) + 1), k=min(len(text) + 1, rng.randint(1, 5)))) | {len(text)})
        stream, reasoning, content = ReasoningStream(parser, state), "", ""
        for start, cut in zip([0, *cuts], cuts):
            delta = stream.feed(text[start:cut], final=cut == len(text))
            reasoning, content = reasoning + delta.reasoning, content + delta.content
        assert ReasoningSplit(reasoning, content) == split_reasoning(parser, text, prompt_state=state), (text, cuts)


# a Qwen3-like template: enable_thinking false closes an empty think block in the prompt
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}assistant:"
            "{% if enable_thinking is defined and not enable_thinking %}<think>\n\n</think>\n\n{% endif %}")


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    """deepseek_r1 (the parser Qwen3's model card once named for vLLM) and the Qwen3-like template."""
    return start_server(engine_config(tiny_model_path), reasoning_parser="deepseek_r1", chat_template=TEMPLATE)


def test_enable_thinking_false_answers_in_content_whole_and_streamed(http, script):
    script(["The ", "answer."])
    body = {"model": MODEL_NAME, "max_tokens": 8, "messages": [{"role": "user", "content": "hi"}],
            "chat_template_kwargs": {"enable_thinking": False}}
    message = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert message["content"] == "The answer." and message["reasoning_content"] is None
    with http.stream("POST", "/v1/chat/completions", json={**body, "stream": True}) as resp:
        events = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    deltas = [e["choices"][0]["delta"] for e in events]
    assert "".join(d.get("content") or "" for d in deltas) == "The answer."
    assert not any(d.get("reasoning_content") for d in deltas)
    # thinking on (the template leaves the prompt alone): deepseek_r1 reads the answer as reasoning
    thinking = http.post("/v1/chat/completions", json={**body, "chat_template_kwargs": {}}).json()
    assert thinking["choices"][0]["message"]["reasoning_content"] == "The answer."
