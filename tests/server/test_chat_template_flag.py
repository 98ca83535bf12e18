"""`--chat-template`: the server renders chat requests with the template it was given (here on a checkpoint
whose tokenizer has none); without any template a chat request is an OpenAI-shaped 400 naming the flag;
`python -m engine.serve` reads the flag at start-up and exits 2 on a bad value."""
from __future__ import annotations

import json
import os
import pathlib
import subprocess
import sys

import pytest

import engine.serve
from engine.sampling_params import SamplingParams
from server_harness import MODEL_NAME, capture_serve, engine_config, offline_generate, write_tiny_qwen3

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
TEMPLATE = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] }}\n{% endfor %}"
            "{% if add_generation_prompt %}bot:{% endif %}{{ suffix | default('') }}")
MESSAGES = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello there"}]
RENDERED = "system: Be brief.\nuser: Hello there\nbot:"


def remove_chat_template(path: pathlib.Path) -> None:
    """The checkpoint's tokenizer files without a chat template."""
    (path / "chat_template.jinja").unlink(missing_ok=True)
    config_file = path / "tokenizer_config.json"
    config = json.loads(config_file.read_text())
    config.pop("chat_template", None)
    config_file.write_text(json.dumps(config))


@pytest.fixture(scope="module")
def server(tmp_path_factory, start_server):
    """The tiny checkpoint (the weights of `tiny_model_path`) without a tokenizer template, served with
    TEMPLATE as --chat-template does (create_app's chat_template)."""
    path = tmp_path_factory.mktemp("server-tiny-qwen3-no-template")
    write_tiny_qwen3(path)
    remove_chat_template(path)
    return start_server(engine_config(str(path)), chat_template=TEMPLATE)


def chat(http, **extra):
    return http.post("/v1/chat/completions", json={"model": MODEL_NAME, "messages": MESSAGES, "max_tokens": 6,
                                                   "temperature": 0, **extra})


def test_the_tokenizer_has_no_template_of_its_own(server):
    assert server.async_engine.tokenizer.chat_template is None


def test_chat_requests_are_rendered_with_the_servers_template(server, http, reference_engine):
    tok = server.async_engine.tokenizer
    ids = tok.encode(RENDERED, add_special_tokens=False)
    resp = chat(http)
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["prompt_tokens"] == len(ids)
    (ref,) = offline_generate(reference_engine, [ids], SamplingParams(max_tokens=6, temperature=0))
    assert resp.json()["choices"][0]["message"]["content"] == ref[0].text
    tokenized = http.post("/tokenize", json={"model": MODEL_NAME, "messages": MESSAGES})
    assert tokenized.status_code == 200 and tokenized.json()["tokens"] == ids
    no_header = http.post("/tokenize", json={"messages": MESSAGES, "add_generation_prompt": False}).json()
    assert no_header["tokens"] == tok.encode(RENDERED.removesuffix("bot:"), add_special_tokens=False)


def test_chat_template_kwargs_reach_the_servers_template(server, http):
    resp = chat(http, chat_template_kwargs={"suffix": " ok"})
    assert resp.status_code == 200, resp.text
    expected = server.async_engine.tokenizer.encode(RENDERED + " ok", add_special_tokens=False)
    assert resp.json()["usage"]["prompt_tokens"] == len(expected)


def test_without_any_template_a_chat_request_is_400_naming_the_flag(server, http, monkeypatch):
    monkeypatch.setattr(server.server.config.app.state.serving, "chat_template", None)
    for resp in (chat(http), chat(http, stream=True), http.post("/tokenize", json={"messages": MESSAGES})):
        assert resp.status_code == 400, resp.text
        error = resp.json()["error"]
        assert error["type"] == "invalid_request_error" and error["param"] == "messages" and error["code"] == 400
        assert "no chat template" in error["message"] and "--chat-template" in error["message"]
    completion = http.post("/v1/completions", json={"prompt": "Hello", "max_tokens": 2})
    assert completion.status_code == 200, completion.text       # completions need no template


def test_a_broken_template_is_400_saying_so(server, http, monkeypatch):
    monkeypatch.setattr(server.server.config.app.state.serving, "chat_template", "{{ raise_exception('nope') }}")
    resp = chat(http)
    assert resp.status_code == 400, resp.text
    assert resp.json()["error"]["message"].startswith("cannot apply the chat template: ")


def test_serve_reads_the_flag_at_start_up(tmp_path, monkeypatch):
    """main() loads --chat-template (here a file) before the engine starts and hands it to the app."""
    template_file = tmp_path / "template.jinja"
    template_file.write_text(TEMPLATE)
    runs = capture_serve(monkeypatch)
    engine.serve.main(["--model", "preset:tiny-qwen3", "--device", "cpu", "--dtype", "float32",
                       "--max-model-len", "128", "--num-kv-blocks", "16", "--no-engine-process",
                       "--chat-template", str(template_file)])
    (config,) = runs
    assert config.app.state.serving.chat_template == TEMPLATE
    assert engine.serve.build_parser().parse_args(["--model", "m"]).chat_template is None


@pytest.mark.parametrize("value", ["chatml", "/no/such/template.jinja"])
def test_a_bad_chat_template_value_exits_2(value):
    proc = subprocess.run([sys.executable, "-m", "engine.serve", "--model", "preset:tiny-qwen3",
                           "--chat-template", value], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2, proc.stderr
    assert "--chat-template must be a file path or a Jinja template string" in proc.stderr
    assert value in proc.stderr
