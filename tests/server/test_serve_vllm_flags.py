"""vLLM's `vllm serve` flags on `python -m engine.serve`: each one the engine honours reaches the engine's
config, the server's options or uvicorn (and does there what vLLM's does); the ones it refuses exit 2
naming the flag and why."""
from __future__ import annotations

import json
import logging
import re
import shutil
import subprocess

import httpx
import pytest

import engine.serve
from engine.serve import api_keys_from, build_parser, config_from_args, uvicorn_options
from server_harness import MODEL_NAME, capture_serve, engine_config, free_port, http_client, start_serve, stop_serve

TOKEN_ID = re.compile(r"token_id:(\d+)")
SERVE = ["preset:tiny-qwen3", "--device", "cpu", "--dtype", "float32", "--max-model-len", "128",
         "--num-kv-blocks", "16", "--no-engine-process"]


def _args(*flags: str):
    return build_parser().parse_args(["m", *flags])


def test_engine_flags_reach_the_engine_config():
    config = config_from_args(_args("--tokenizer-revision", "v2", "--download-dir", "/cache/hf",
                                    "--no-async-scheduling"))
    assert (config.tokenizer_revision, config.download_dir, config.async_scheduling) == ("v2", "/cache/hf", False)
    defaults = config_from_args(_args())
    assert (defaults.tokenizer_revision, defaults.download_dir, defaults.async_scheduling) == (None, None, True)
    assert config_from_args(_args("--async-scheduling")).async_scheduling


def test_http_flags_reach_uvicorn(tmp_path):
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    key.write_text("k")
    cert.write_text("c")
    settings = uvicorn_options(_args("--root-path", "/api", "--uvicorn-log-level", "trace",
                                     "--disable-uvicorn-access-log", "--ssl-keyfile", str(key),
                                     "--ssl-certfile", str(cert), "--host", "0.0.0.0", "--port", "9000"))
    assert settings == dict(host="0.0.0.0", port=9000, log_level="trace", access_log=False, root_path="/api",
                            ssl_keyfile=str(key), ssl_certfile=str(cert), timeout_graceful_shutdown=0)
    defaults = uvicorn_options(_args("--log-level", "warning"))
    assert (defaults["log_level"], defaults["access_log"], defaults["root_path"]) == ("warning", True, "")
    assert defaults["host"] == "0.0.0.0" and defaults["port"] == 8000     # vLLM's: every interface
    assert uvicorn_options(_args("--host", "127.0.0.1"))["host"] == "127.0.0.1"
    assert defaults["ssl_keyfile"] is None and defaults["ssl_certfile"] is None


def test_server_flags_reach_the_app(monkeypatch):
    runs = capture_serve(monkeypatch)
    engine.serve.main([*SERVE, "--response-role", "bot", "--return-tokens-as-token-ids", "--enable-log-requests",
                       "--chat-template-content-format", "string", "--root-path", "/api"])
    (config,) = runs
    serving = config.app.state.serving
    assert (serving.response_role, serving.tokens_as_ids, serving.log_requests) == ("bot", True, True)
    assert config.root_path == "/api"
    runs.clear()
    engine.serve.main([*SERVE, "--disable-log-requests"])
    serving = runs[0].app.state.serving
    assert (serving.response_role, serving.tokens_as_ids, serving.log_requests) == ("assistant", False, False)


@pytest.mark.parametrize("flags, says", [
    (["--max-num-partial-prefills", "2"], "--max-num-partial-prefills is not supported: concurrent partial"),
    (["--max-num-partial-prefills=4"], "--max-num-partial-prefills is not supported"),
    (["--chat-template-content-format", "openai"],
     "argument --chat-template-content-format: invalid choice: 'openai'"),
    (["--ssl-keyfile", "/no/key.pem", "--ssl-certfile", "/no/cert.pem"], "--ssl-keyfile '/no/key.pem' is not a file"),
    (["--ssl-keyfile", __file__], "--ssl-keyfile needs --ssl-certfile"),
    (["--enable-log-requests", "--disable-log-requests"], "contradict each other"),
    (["--uvicorn-log-level", "verbose"], "argument --uvicorn-log-level: invalid choice: 'verbose'"),
    (["--response-role", " "], "--response-role"),
    (["--tokenizer-revision", ""], "tokenizer_revision"),
    (["--quantization", "awq"], "unrecognized arguments: --quantization awq"),
])
def test_refused_flags_exit_2_naming_the_flag(flags, says, capsys):
    with pytest.raises(SystemExit) as exit_info:
        engine.serve.main([*SERVE, *flags])
    assert exit_info.value.code == 2
    assert says in capsys.readouterr().err


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    return start_server(engine_config(tiny_model_path), api_key=["key-one", "key-two"], response_role="bot",
                        return_tokens_as_token_ids=True, enable_log_requests=True)


def _ids(tokens: list[str]) -> list[int]:
    matches = [TOKEN_ID.fullmatch(t) for t in tokens]
    assert all(matches), tokens
    return [int(m.group(1)) for m in matches]


def test_tokens_as_ids_response_role_and_request_log(server, caplog):
    """Chat and completions logprobs name every token (sampled and top) "token_id:{id}", ids that decode
    to the answer; the answer's role is --response-role; each engine request is logged; either key opens."""
    tokenizer = server.async_engine.tokenizer
    with http_client(server, headers={"Authorization": "Bearer key-two"}) as http, \
            caplog.at_level(logging.INFO, logger="server.serving"):
        chat = http.post("/v1/chat/completions", json={"model": MODEL_NAME, "max_tokens": 5, "logprobs": True,
                                                        "top_logprobs": 2, "ignore_eos": True,
                                                        "messages": [{"role": "user", "content": "hi"}]}).json()
        done = http.post("/v1/completions", json={"model": MODEL_NAME, "prompt": "hi", "max_tokens": 5,
                                                  "logprobs": 2, "ignore_eos": True}).json()
    choice = chat["choices"][0]
    assert choice["message"]["role"] == "bot"
    content = choice["logprobs"]["content"]
    assert tokenizer.decode(_ids([c["token"] for c in content])) == choice["message"]["content"]
    assert all(len(_ids([t["token"] for t in c["top_logprobs"]])) == 2 for c in content)
    assert all(c["bytes"] == list(tokenizer.decode(_ids([c["token"]])).encode()) for c in content)
    logprobs = done["choices"][0]["logprobs"]
    assert tokenizer.decode(_ids(logprobs["tokens"])) == done["choices"][0]["text"]
    assert all(_ids(list(top)) for top in logprobs["top_logprobs"])
    assert len(re.findall(r"Received request \S+: params: SamplingParams\(.*num_prompt_tokens: \d+", caplog.text)) == 2


def test_the_request_field_return_tokens_as_token_ids_wins_over_the_flag(server, tiny_model_path, start_server):
    """vLLM's per-request `return_tokens_as_token_ids`: false names tokens by their text on a server started
    with the flag, true names them by id on one without it, streamed chunks too (greedy: the same tokens)."""
    tokenizer = server.async_engine.tokenizer
    body = {"model": MODEL_NAME, "max_tokens": 4, "logprobs": 1, "ignore_eos": True, "prompt": "hi", "temperature": 0}
    chat_body = {"model": MODEL_NAME, "max_tokens": 4, "logprobs": True, "ignore_eos": True, "temperature": 0,
                 "messages": [{"role": "user", "content": "hi"}]}
    with http_client(server, headers={"Authorization": "Bearer key-one"}) as http:
        flag = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["tokens"]
        by_text = http.post("/v1/completions", json={**body, "return_tokens_as_token_ids": False}).json()
        chat_flag = http.post("/v1/chat/completions", json=chat_body).json()["choices"][0]["logprobs"]["content"]
        chat = http.post("/v1/chat/completions", json={**chat_body, "return_tokens_as_token_ids": False}).json()
    texts = [tokenizer.decode([i]) for i in _ids(flag)]
    assert by_text["choices"][0]["logprobs"]["tokens"] == texts
    chat_texts = [tokenizer.decode([i]) for i in _ids([c["token"] for c in chat_flag])]
    assert [c["token"] for c in chat["choices"][0]["logprobs"]["content"]] == chat_texts
    plain = start_server(engine_config(tiny_model_path))
    with http_client(plain) as http:
        default = http.post("/v1/completions", json=body).json()["choices"][0]["logprobs"]["tokens"]
        by_id = http.post("/v1/completions", json={**body, "return_tokens_as_token_ids": True}).json()
        with http.stream("POST", "/v1/completions", json={**body, "stream": True,
                                                          "return_tokens_as_token_ids": True}) as resp:
            chunks = [json.loads(line[6:]) for line in resp.iter_lines() if line.startswith("data: {")]
    ids = _ids(by_id["choices"][0]["logprobs"]["tokens"])
    assert default == [tokenizer.decode([i]) for i in ids] == texts
    streamed = [t for c in chunks if c["choices"] and c["choices"][0]["logprobs"]
                for t in c["choices"][0]["logprobs"]["tokens"]]
    assert _ids(streamed) == ids


def test_either_api_key_opens_the_server(server):
    for key, status in (("key-one", 200), ("key-two", 200), ("key-three", 401)):
        with http_client(server, headers={"Authorization": f"Bearer {key}"}) as http:
            assert http.get("/v1/models").status_code == status


@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl makes the test's certificate")
def test_https_behind_a_path_proxy_without_access_log(tmp_path):
    """The real process: HTTPS with --ssl-keyfile / --ssl-certfile; --root-path: the API at /v1 (the
    proxy strips its prefix), the docs pointing at the prefix, /health open without the key; no access
    lines with --disable-uvicorn-access-log; request lines with --enable-log-requests."""
    key, cert = tmp_path / "key.pem", tmp_path / "cert.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "1", "-subj", "/CN=127.0.0.1"], check=True, capture_output=True)
    port = free_port()
    proc = start_serve(port, "--ssl-keyfile", str(key), "--ssl-certfile", str(cert), "--root-path", "/api",
                       "--api-key", "secret", "--disable-uvicorn-access-log", "--enable-log-requests",
                       "--log-level", "info", "--num-kv-blocks", "16", "--max-model-len", "128", scheme="https")
    base, auth = f"https://127.0.0.1:{port}", {"Authorization": "Bearer secret"}
    try:
        resp = httpx.post(f"{base}/v1/completions", headers=auth, verify=False, timeout=60,
                          json={"prompt": "hi", "max_tokens": 2, "ignore_eos": True})
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 2
        assert "/api/openapi.json" in httpx.get(f"{base}/docs", headers=auth, verify=False).text
        with pytest.raises(httpx.TransportError):
            httpx.get(f"http://127.0.0.1:{port}/health", timeout=5)       # TLS only
    finally:
        output = stop_serve(proc)
    assert "Received request" in output
    assert "POST /v1/completions" not in output and "GET /health" not in output


def test_api_key_from_the_flag_then_ours_then_vllms_environment_variable():
    args = build_parser().parse_args(["preset:tiny-qwen3"])
    assert api_keys_from(args, {}) is None
    assert api_keys_from(args, {"VLLM_API_KEY": "v"}) == "v"
    assert api_keys_from(args, {"VLLM_API_KEY": "v", "ENGINE_API_KEY": "e"}) == "e"
    flagged = build_parser().parse_args(["preset:tiny-qwen3", "--api-key", "a", "b"])
    assert api_keys_from(flagged, {"ENGINE_API_KEY": "e"}) == ["a", "b"]
