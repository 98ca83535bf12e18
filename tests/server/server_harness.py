"""Test harness: a tiny Qwen3 checkpoint, the real server (uvicorn in a thread), an offline reference."""
from __future__ import annotations

import asyncio
import os
import signal
import socket
import subprocess
import sys
import threading
import time

import httpx
import openai
import torch
import transformers
import uvicorn

from engine.async_engine import AsyncEngine
from engine.chat_template import render_chat
from engine.config import EngineConfig
from engine.llm_engine import LLMEngine
from engine.outputs import TOKEN_TIMES, CompletionOutput, RequestOutput
from engine.sampling_params import RequestOutputKind, SamplingParams
from models import presets
from models.tokenizer import BYTE_VOCAB_SIZE, byte_tokenizer
from server.app import create_app
from server.options import ServerOptions

MODEL_NAME = "tiny-qwen3"
API_KEY = "test-key-123"
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def write_tiny_qwen3(path, seed: int = 0) -> None:
    """The tiny-qwen3 preset's shape with a vocabulary of exactly the byte tokenizer's tokens and random
    weights large enough that greedy choices are clear (the preset's dummy weights give near-flat logits)."""
    config = presets.tiny_qwen3()
    config.vocab_size = BYTE_VOCAB_SIZE
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, param in model.named_parameters():
            noise = torch.randn(param.shape, generator=gen)
            param.copy_(1.0 + 0.1 * noise if "norm" in name else 0.1 * noise)
    model.save_pretrained(path, safe_serialization=True)
    byte_tokenizer().save_pretrained(path)


def engine_config(model: str, **overrides) -> EngineConfig:
    kwargs = dict(model=model, device="cpu", dtype="float32", max_model_len=128, num_kv_blocks=128, block_size=16)
    kwargs.update(overrides)
    return EngineConfig(**kwargs)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class ServerThread:
    """The real app under uvicorn on 127.0.0.1:<free port>, in a background thread."""

    def __init__(self, config: EngineConfig, api_key: str | None = None, engine_cls=AsyncEngine,
                 served_model_name: str | list[str] = MODEL_NAME, on_engine_death=None, **app_options) -> None:
        """app_options: the server's options (ServerOptions' fields: chat_template, reasoning_parser,
        tool_call_parser, enable_auto_tool_choice, disable_log_stats); on_engine_death: create_app's."""
        self.async_engine = engine_cls(config)
        app = create_app(self.async_engine, served_model_name, api_key, ServerOptions(**app_options),
                         on_engine_death=on_engine_death)
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning"))
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> "ServerThread":
        self.thread.start()
        deadline = time.monotonic() + 30
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("the test server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.async_engine.shutdown()

    def stats(self):
        """Fresh engine stats, read on the engine loop thread."""
        return asyncio.run(self.async_engine.get_stats())

    def wait_idle(self, timeout: float = 10.0):
        """Stats once nothing runs or waits and every block is free again (or the last stats at timeout)."""
        deadline = time.monotonic() + timeout
        while True:
            stats = self.stats()
            idle = stats.num_running == 0 and stats.num_waiting == 0
            if (idle and stats.num_free_blocks == stats.num_total_blocks) or time.monotonic() > deadline:
                return stats
            time.sleep(0.05)


def http_client(server: ServerThread, timeout: float = 60, **kwargs) -> httpx.Client:
    """An httpx client on `server`'s base URL (kwargs: httpx.Client's, e.g. headers)."""
    return httpx.Client(base_url=server.base_url, timeout=timeout, **kwargs)


def openai_client(server: ServerThread) -> openai.OpenAI:
    """The official openai client on `server` (no api key checked, no retries)."""
    return openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="unused", max_retries=0, timeout=60)


def script_answers(monkeypatch, server: ServerThread, pieces: list[str]) -> None:
    """`server`'s engine answers every request with `pieces`, one token each step (until the test ends)."""
    monkeypatch.setattr(server.async_engine, "add_request", scripted_add_request(pieces))


async def idle_stats(engine, pause: float, tries: int = 200):
    """An engine client's stats once nothing runs or waits (or the last stats after `tries` polls)."""
    for _ in range(tries):
        stats = await engine.get_stats()
        if stats.num_running == 0 and stats.num_waiting == 0:
            return stats
        await asyncio.sleep(pause)
    return stats


def scripted_add_request(pieces: list[str]):
    """A stand-in for an engine client's add_request that answers every request with `pieces` of text,
    one token and one step each, then finish_reason "stop" (random weights never write tags such as
    <think> or <tool_call>); its outputs are of the params' output_kind, as the engine's (DELTA: each
    step's piece; FINAL_ONLY: the last output alone, with the steps' times)."""
    async def add_request(request_id, prompt_ids, params, priority=0):
        kind = params.output_kind

        async def outputs():
            text, times = "", []
            for i, piece in enumerate(pieces):
                text += piece
                times.append(time.monotonic())
                last = i == len(pieces) - 1
                if kind is RequestOutputKind.FINAL_ONLY and not last:
                    continue
                comp = _scripted_completion(kind, text, piece, i, last)
                metrics = {TOKEN_TIMES: times} if kind is RequestOutputKind.FINAL_ONLY else {}
                yield RequestOutput(request_id, None, prompt_ids, [comp], finished=last, metrics=metrics)
        return outputs()
    return add_request


def _scripted_completion(kind: RequestOutputKind, text: str, piece: str, i: int, last: bool) -> CompletionOutput:
    """Step i's CompletionOutput of an answer whose text so far is `text`, `piece` (token i) its newest."""
    ids = list(range(i + 1))
    if kind is RequestOutputKind.DELTA:
        text, ids = piece, [i]
    added = (text, ids) if kind is RequestOutputKind.FINAL_ONLY else (piece, [i])
    return CompletionOutput(index=0, text=text, token_ids=ids, text_delta=added[0], token_ids_delta=added[1],
                            finish_reason="stop" if last else None)


def offline_generate(engine: LLMEngine, prompts: list, params: SamplingParams) -> list[list]:
    """Per prompt, the final CompletionOutputs of the synchronous engine (reference for the server)."""
    return [out.outputs for out in offline_outputs(engine, prompts, params)]


def offline_outputs(engine: LLMEngine, prompts: list, params: SamplingParams) -> list[RequestOutput]:
    """Per prompt, the synchronous engine's final RequestOutput (prompt logprobs included)."""
    final = {}
    for i, prompt in enumerate(prompts):
        engine.add_request(f"ref-{i}", prompt, params)
    while engine.has_unfinished_requests():
        for out in engine.step():
            if out.finished:
                final[out.request_id] = out
    return [final[f"ref-{i}"] for i in range(len(prompts))]


def assert_400(resp: httpx.Response, param: str, *words: str) -> str:
    """The OpenAI error shape of a 400 (invalid_request_error) naming `param`, its message holding each of
    `words`; returns the message."""
    assert resp.status_code == 400, resp.text
    assert resp.headers["content-type"].startswith("application/json")
    error = resp.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["code"], error["type"], error["param"]) == (400, "invalid_request_error", param), error
    for word in words:
        assert word in error["message"], error["message"]
    return error["message"]


def post_to(http: httpx.Client, endpoint: str, text: str, **body) -> httpx.Response:
    """POST `body` to /v1/chat/completions ("chat", `text` as the one user message) or /v1/completions
    ("completions", `text` as the prompt)."""
    if endpoint == "chat":
        return http.post("/v1/chat/completions", json={"messages": [{"role": "user", "content": text}], **body})
    return http.post("/v1/completions", json={"prompt": text, **body})


def first_text(resp: httpx.Response) -> str:
    """The first choice's text of a 200 answer, chat or completions."""
    assert resp.status_code == 200, resp.text
    choice = resp.json()["choices"][0]
    return choice["message"]["content"] if "message" in choice else choice["text"]


def posted_prompt_ids(tokenizer, endpoint: str, text: str) -> list[int]:
    """The prompt ids of post_to's request: the chat template's rendering of the one message, or the text's."""
    if endpoint == "chat":
        return render_chat(tokenizer, [{"role": "user", "content": text}])
    return tokenizer.encode(text)


def capture_serve(monkeypatch) -> list:
    """engine.serve.main's uvicorn servers do not serve: each one's uvicorn.Config (`.app`, `.root_path`,
    ...) is appended to the list returned, and the server counts as started (main returns)."""
    configs = []

    def run(server, sockets=None):
        server.started = True
        configs.append(server.config)

    monkeypatch.setattr("uvicorn.Server.run", run)
    return configs


def start_serve(port: int, *extra: str, scheme: str = "http", env: dict | None = None) -> subprocess.Popen:
    """`python -m engine.serve` on the tiny preset (CPU), once /health answers (over `scheme`; https
    unverified: a test's self-signed certificate); its stdout and stderr in one pipe; `env`: variables
    added to this process's environment."""
    cmd = [sys.executable, "-m", "engine.serve", "preset:tiny-qwen3", "--port", str(port), "--device", "cpu",
           "--dtype", "float32", "--log-level", "warning", *extra]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ, **(env or {})))
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.stdout.read()
        try:
            if httpx.get(f"{scheme}://127.0.0.1:{port}/health", timeout=2, verify=False).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server did not come up"
        time.sleep(0.2)


def stop_serve(proc: subprocess.Popen) -> str:
    """Stop a `start_serve` process as Ctrl-C does (killed if it has not exited within 20 s); its output."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
    try:
        output, _ = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        output, _ = proc.communicate()
    return output or ""
