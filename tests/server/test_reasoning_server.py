"""`--reasoning-parser`: chat answers' thinking in `reasoning_content`, whole and streamed. The answers
are scripted (random weights never write <think>): the engine's add_request is replaced by a stream
of RequestOutputs whose text arrives in pieces that cut the tags."""
from __future__ import annotations

import json

import pytest

import engine.serve
from server_harness import MODEL_NAME, capture_serve, engine_config

PIECES = ["<thi", "nk>\nplan ", "a</th", "ink>\n\nans", "wer"]


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    return start_server(engine_config(tiny_model_path), reasoning_parser="qwen3")


@pytest.fixture
def scripted(script):
    """The engine answers every request with PIECES, one token each step."""
    script(PIECES)


def chat(http, **extra):
    return http.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 8,
                                                   "messages": [{"role": "user", "content": "hi"}], **extra})


def test_the_answer_carries_its_thinking_apart(http, scripted):
    resp = chat(http)
    assert resp.status_code == 200, resp.text
    message = resp.json()["choices"][0]["message"]
    assert message["reasoning_content"] == "\nplan a"
    assert message["content"] == "\n\nanswer"


def test_a_stream_sends_thinking_then_content_and_never_a_piece_of_a_tag(http, scripted):
    with http.stream("POST", "/v1/chat/completions", json={"model": MODEL_NAME, "stream": True, "max_tokens": 8,
                                                            "messages": [{"role": "user", "content": "hi"}]}) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    deltas = [json.loads(e)["choices"][0]["delta"] for e in events[:-1] if json.loads(e)["choices"]]
    reasoning = [d["reasoning_content"] for d in deltas if d.get("reasoning_content")]
    content = [d["content"] for d in deltas if d.get("content")]
    assert "".join(reasoning) == "\nplan a" and "".join(content) == "\n\nanswer"
    assert all("<" not in piece for piece in reasoning + content)
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert not any(d.get("reasoning_content") for d in deltas[first_content:])


def test_a_real_answer_without_think_tags_is_all_content(http, reference_engine):
    """The tiny model's greedy answer (no <think>) comes back whole in content, reasoning_content null."""
    resp = chat(http, temperature=0, max_tokens=6)
    message = resp.json()["choices"][0]["message"]
    assert message["reasoning_content"] is None
    assert len(message["content"]) > 0 and resp.json()["usage"]["completion_tokens"] == 6


def test_the_flag_reaches_the_app_and_a_bad_value_exits_2(monkeypatch, capsys):
    runs = capture_serve(monkeypatch)
    engine.serve.main(["--model", "preset:tiny-qwen3", "--device", "cpu", "--dtype", "float32",
                       "--max-model-len", "128", "--num-kv-blocks", "16", "--no-engine-process",
                       "--reasoning-parser", "deepseek_r1"])
    assert runs[0].app.state.serving.reasoning_parser == "deepseek_r1"
    with pytest.raises(SystemExit) as exc:
        engine.serve.build_parser().parse_args(["--model", "m", "--reasoning-parser", "o1"])
    assert exc.value.code == 2 and "qwen3" in capsys.readouterr().err
