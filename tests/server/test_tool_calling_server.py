"""Tool calling on /v1/chat/completions (`--enable-auto-tool-choice --tool-call-parser hermes`, and
`llama3_json`): the tools reach the chat template, the answer's `<tool_call>` blocks (llama3_json: its
JSON calls) come back as `tool_calls` (whole and streamed), tool_choice is checked as vLLM does, and a
tool-result conversation renders. Random weights never write tool calls, so the answers are scripted:
the engine's add_request is replaced by a stream of RequestOutputs whose text arrives in pieces that
cut the tags."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

import engine.serve
from engine import LLM, SamplingParams
from engine.chat_template import render_chat
from server_harness import MODEL_NAME, capture_serve, engine_config, http_client, script_answers, scripted_add_request

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TOOLS = [{"type": "function", "function": {
    "name": "get_weather", "description": "The weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}}]
# prints the tools, each message, its tool calls (are the arguments a dict?) and the call a tool answers
TEMPLATE = ("{{ tools | tojson }}\n{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}"
            "{% for c in m.get('tool_calls') or [] %} call {{ c.function.name }} {{ c.function.arguments is mapping }}"
            " {{ c.function.arguments | tojson }}{% endfor %}{% if m.get('tool_call_id') %} for "
            "{{ m['tool_call_id'] }}{% endif %}{{ '\\n' }}{% endfor %}{% if add_generation_prompt %}bot:{% endif %}")
MESSAGES = [{"role": "user", "content": "Weather in Paris?"}]
TWO_CALLS = ["I will ", "check.\n<tool", '_call>\n{"name": "get_weather", "arguments": {"city": "Par',
             'is"}}\n</tool_call>\n<tool_call>\n{"name": "get_time", "arguments": {}}\n</tool', "_call>"]
HISTORY = MESSAGES + [
    {"role": "assistant", "content": None, "tool_calls": [
        {"id": "call_1", "type": "function", "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'}}]},
    {"role": "tool", "tool_call_id": "call_1", "content": "sunny"}]


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    """The flags on, with TEMPLATE (which prints the tools) and the qwen3 reasoning parser (the `http`,
    `client` and `script` fixtures use it)."""
    return start_server(engine_config(tiny_model_path, max_model_len=512), chat_template=TEMPLATE,
                        reasoning_parser="qwen3", enable_auto_tool_choice=True, tool_call_parser="hermes")


@pytest.fixture(scope="module")
def plain_server(tiny_model_path, start_server):
    """No tool flags; the tokenizer's ChatML template (which ignores tools)."""
    return start_server(engine_config(tiny_model_path))


@pytest.fixture(scope="module")
def plain_http(plain_server):
    with http_client(plain_server) as client:
        yield client


def chat(http, messages=MESSAGES, **extra):
    return http.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 8, "messages": messages,
                                                   "tools": TOOLS, **extra})


def stream_deltas(http, **extra) -> tuple[list[dict], list]:
    """The streamed choice deltas and finish reasons of a chat request with TOOLS."""
    body = {"model": MODEL_NAME, "max_tokens": 8, "messages": MESSAGES, "tools": TOOLS, "stream": True, **extra}
    with http.stream("POST", "/v1/chat/completions", json=body) as resp:
        events = [line[6:] for line in resp.iter_lines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    choices = [json.loads(e)["choices"][0] for e in events[:-1]]
    return [c["delta"] for c in choices], [c["finish_reason"] for c in choices]


def test_tools_reach_the_prompt_through_the_template(server, http):
    """The real engine: the prompt is TEMPLATE rendered with the tools (as render_chat does), in chat
    requests and /tokenize alike."""
    tok = server.async_engine.tokenizer
    expected = render_chat(tok, MESSAGES, True, TEMPLATE, tools=TOOLS)
    assert tok.decode(expected).startswith(json.dumps(TOOLS) + "\nuser: Weather in Paris?")
    resp = chat(http, temperature=0, max_tokens=2)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == len(expected)
    tokenized = http.post("/tokenize", json={"messages": MESSAGES, "tools": TOOLS}).json()
    assert tokenized["tokens"] == expected
    without = http.post("/tokenize", json={"messages": MESSAGES}).json()["tokens"]
    assert tok.decode(without).startswith("null\n")


def test_two_calls_come_back_as_tool_calls(http, script):
    script(TWO_CALLS)
    resp = chat(http)
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    message = choice["message"]
    assert message["content"] == "I will check." and message["reasoning_content"] is None
    calls = message["tool_calls"]
    assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
    assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {}]
    assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
    assert calls[0]["id"] != calls[1]["id"]


def test_two_calls_streamed(http, script):
    script(TWO_CALLS)
    deltas, finish = stream_deltas(http)
    content = [d["content"] for d in deltas if d.get("content")]
    assert "".join(content) == "I will check." and all("<" not in c for c in content)
    calls = [call for d in deltas for call in d.get("tool_calls") or []]
    assert [(c["index"], c["function"]["name"]) for c in calls] == [(0, "get_weather"), (1, "get_time")]
    assert json.loads(calls[0]["function"]["arguments"]) == {"city": "Paris"}
    assert all(c["id"].startswith("call_") and c["type"] == "function" for c in calls)
    assert finish[-1] == "tool_calls" and finish[:-1] == [None] * (len(finish) - 1)


def test_tool_choice_none_leaves_the_text_alone(http, script):
    script(TWO_CALLS)
    choice = chat(http, tool_choice="none").json()["choices"][0]
    assert choice["message"]["content"] == "".join(TWO_CALLS) and choice["message"]["tool_calls"] == []
    assert choice["finish_reason"] == "stop"


def test_an_empty_tools_list_with_auto_is_served_as_text(http, script):
    """vLLM takes `tools: []` as tools given (tool_choice "auto" is no 400) with nothing to call: the
    answer is left as text (this was a 400, "`tools` must be set")."""
    script(TWO_CALLS)
    resp = chat(http, tools=[], tool_choice="auto")
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    assert choice["message"]["content"] == "".join(TWO_CALLS) and choice["message"]["tool_calls"] == []
    assert choice["finish_reason"] == "stop"


def test_calls_are_parsed_from_the_content_after_the_thinking(http, script):
    """Qwen3 thinks, then calls: a block inside the thinking stays there; the content is only the call."""
    thinking = ["<think>maybe <tool_call>\n", '{"name": "get_time"}\n</tool_call></th', "ink>\n\n<tool"]
    script(thinking + TWO_CALLS[2:4] + ["_call>\n"])
    choice = chat(http).json()["choices"][0]
    message = choice["message"]
    assert message["reasoning_content"] == 'maybe <tool_call>\n{"name": "get_time"}\n</tool_call>'
    assert message["content"] is None and choice["finish_reason"] == "tool_calls"
    assert [c["function"]["name"] for c in message["tool_calls"]] == ["get_weather", "get_time"]
    deltas, finish = stream_deltas(http)
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == message["reasoning_content"]
    assert not any(d.get("content") for d in deltas)
    assert [c["function"]["name"] for d in deltas for c in d.get("tool_calls") or []] == ["get_weather", "get_time"]
    assert finish[-1] == "tool_calls"


@pytest.mark.parametrize("extra, skips", [({}, False), ({"tool_choice": "none"}, True), ({"tools": None}, True)])
def test_hermes_calls_keep_special_tokens_in_the_text(server, http, monkeypatch, extra, skips):
    """As vLLM's hermes parser: with tools in play the text keeps special tokens (some models' <tool_call>
    is one), so the parser sees the tags; without tools, or with tool_choice "none", the default holds."""
    seen = []

    async def add_request(request_id, prompt_ids, params, priority=0):
        seen.append(params.skip_special_tokens)
        return await scripted_add_request(TWO_CALLS)(request_id, prompt_ids, params, priority)

    monkeypatch.setattr(server.async_engine, "add_request", add_request)
    assert chat(http, **extra).status_code == 200
    assert seen == [skips]

def test_required_named_and_tool_less_tool_choice_are_400(http):
    named = {"type": "function", "function": {"name": "get_weather"}}
    for choice in ("required", named):
        error = chat(http, tool_choice=choice).json()["error"]
        assert error["code"] == 400 and error["param"] == "tool_choice"
        assert "guided decoding" in error["message"]
    resp = http.post("/v1/chat/completions", json={"messages": MESSAGES, "tool_choice": "auto"})
    assert resp.status_code == 400 and "`tools` must be set" in resp.json()["error"]["message"]


def test_bad_tools_are_400_naming_the_field(http):
    resp = chat(http, tools=[{"type": "function", "function": {"description": "no name"}}])
    assert resp.status_code == 400 and resp.json()["error"]["param"] == "tools"


def test_without_the_flags_only_tool_choice_none_is_served(plain_server, plain_http, reference_engine):
    """tool_choice "none": tools go to the template (ChatML prints none of them) and the answer is plain
    text. Tools with tool_choice "auto", sent or left out (vLLM's default), are a 400 naming the flags."""
    tok = plain_server.async_engine.tokenizer
    prompt = tok.encode(tok.apply_chat_template(MESSAGES, tools=TOOLS, add_generation_prompt=True, tokenize=False),
                        add_special_tokens=False)
    resp = chat(plain_http, temperature=0, tool_choice="none")
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == len(prompt)
    message = resp.json()["choices"][0]["message"]
    assert message["tool_calls"] == [] and resp.json()["choices"][0]["finish_reason"] != "tool_calls"
    for extra in ({}, {"tool_choice": "auto"}):
        error = chat(plain_http, **extra).json()["error"]
        assert error["code"] == 400 and error["param"] == "tool_choice"
        assert "--enable-auto-tool-choice" in error["message"] and "--tool-call-parser" in error["message"]


def test_a_tool_result_conversation_renders_with_arguments_as_a_dict(http, plain_http):
    tokens = http.post("/tokenize", json={"messages": HISTORY, "tools": TOOLS}).json()["tokens"]
    text = http.post("/detokenize", json={"tokens": tokens}).json()["prompt"]
    assert 'assistant:  call get_weather True {"city": "Paris"}\n' in text
    assert "tool: sunny for call_1\n" in text
    resp = chat(plain_http, messages=HISTORY, max_tokens=2, tool_choice="none")   # the tokenizer's ChatML template
    assert resp.status_code == 200, resp.text


def test_the_openai_client_reads_tool_calls(client, script):
    script(TWO_CALLS)
    resp = client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=8)
    call = resp.choices[0].message.tool_calls[0]
    assert call.function.name == "get_weather" and json.loads(call.function.arguments) == {"city": "Paris"}
    assert resp.choices[0].finish_reason == "tool_calls" and resp.choices[0].message.content == "I will check."
    chunks = list(client.chat.completions.create(model=MODEL_NAME, messages=MESSAGES, tools=TOOLS, max_tokens=8,
                                                 stream=True))
    streamed = [c for chunk in chunks for c in chunk.choices[0].delta.tool_calls or []]
    assert [c.function.name for c in streamed] == ["get_weather", "get_time"]
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


LLAMA3_CALLS = ["<|python_", 'tag|>{"name": "get_weather", ', '"parameters": {"city": "Par',
                'is"}}; {"name": "get_time", ', '"parameters": {}}']


@pytest.fixture(scope="module")
def llama3_server(tiny_model_path, start_server):
    """--enable-auto-tool-choice --tool-call-parser llama3_json (Llama 3.x's JSON calls), no reasoning parser."""
    return start_server(engine_config(tiny_model_path, max_model_len=512), chat_template=TEMPLATE,
                        enable_auto_tool_choice=True, tool_call_parser="llama3_json")


def test_llama3_json_calls_come_back_as_tool_calls_whole_and_streamed(llama3_server, monkeypatch):
    script_answers(monkeypatch, llama3_server, LLAMA3_CALLS)
    with http_client(llama3_server) as client:
        choice = chat(client).json()["choices"][0]
        assert choice["finish_reason"] == "tool_calls" and choice["message"]["content"] is None
        calls = choice["message"]["tool_calls"]
        assert [c["function"]["name"] for c in calls] == ["get_weather", "get_time"]
        assert [json.loads(c["function"]["arguments"]) for c in calls] == [{"city": "Paris"}, {}]
        assert all(c["type"] == "function" and c["id"].startswith("call_") for c in calls)
        deltas, finish = stream_deltas(client)
        assert not any(d.get("content") for d in deltas)
        streamed = [call for d in deltas for call in d.get("tool_calls") or []]
        assert [(c["index"], c["function"]["name"]) for c in streamed] == [(0, "get_weather"), (1, "get_time")]
        assert json.loads(streamed[0]["function"]["arguments"]) == {"city": "Paris"}
        assert finish[-1] == "tool_calls" and finish[:-1] == [None] * (len(finish) - 1)
        # an answer that starts with text is content, streamed as it comes
        script_answers(monkeypatch, llama3_server, ["It is ", '{"name": "x"}', " sunny."])
        choice = chat(client).json()["choices"][0]
        assert choice["message"]["content"] == 'It is {"name": "x"} sunny.' and choice["message"]["tool_calls"] == []
        assert choice["finish_reason"] == "stop"
        deltas, finish = stream_deltas(client)
        assert [d.get("content") for d in deltas if d.get("content")] == ["It is ", '{"name": "x"}', " sunny."]
        assert finish[-1] == "stop"


def test_llm_chat_passes_tools_to_the_template(tiny_model_path):
    llm = LLM(tiny_model_path, device="cpu", dtype="float32", max_model_len=512, num_kv_blocks=64)
    (out,) = llm.chat(MESSAGES, SamplingParams(max_tokens=1), use_tqdm=False, chat_template=TEMPLATE, tools=TOOLS)
    assert out.prompt_token_ids == render_chat(llm.get_tokenizer(), MESSAGES, True, TEMPLATE, tools=TOOLS)
    assert llm.get_tokenizer().decode(out.prompt_token_ids).startswith(json.dumps(TOOLS))


@pytest.mark.parametrize("model, parser", [("preset:tiny-qwen3", "hermes"), ("preset:tiny-llama", "llama3_json")])
def test_the_flags_reach_the_app(monkeypatch, model, parser):
    runs = capture_serve(monkeypatch)
    engine.serve.main(["--model", model, "--device", "cpu", "--dtype", "float32",
                       "--max-model-len", "128", "--num-kv-blocks", "16", "--no-engine-process",
                       "--enable-auto-tool-choice", "--tool-call-parser", parser])
    serving = runs[0].app.state.serving
    assert serving.tool_call_parser == parser and serving.auto_tool_choice


def test_auto_without_a_parser_and_an_unknown_parser_exit_2():
    for flags, says in ((["--enable-auto-tool-choice"], ["--enable-auto-tool-choice requires --tool-call-parser"]),
                        (["--tool-call-parser", "mistral"], ["mistral", "hermes", "llama3_json"])):
        proc = subprocess.run([sys.executable, "-m", "engine.serve", "--model", "preset:tiny-qwen3", *flags],
                              cwd=ROOT, capture_output=True, text=True, timeout=120)
        assert proc.returncode == 2 and all(s in proc.stderr for s in says), proc.stderr
