"""Fixtures of the server tests: the tiny checkpoint (once per session), the offline reference engine, and
the default `server` of a test module (one per module; a module may define its own), and what it shares: start_server (the module's servers), the http / openai clients
on its `server`, scripted answers, slow steps and the engine calls it makes."""
from __future__ import annotations

import contextlib
import time

import pytest

from engine.llm_engine import LLMEngine
from server_harness import ServerThread, engine_config, http_client, openai_client, script_answers, write_tiny_qwen3


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("server-tiny-qwen3")
    write_tiny_qwen3(path)
    return str(path)


@pytest.fixture(scope="session")
def reference_engine(tiny_model_path) -> LLMEngine:
    return LLMEngine(engine_config(tiny_model_path))


@pytest.fixture(scope="module")
def start_server():
    """start_server(config, **kwargs): a ServerThread (its arguments: api_key, engine_cls, the server's
    options) started now and stopped when the test module ends; a module's `server` fixture returns one."""
    with contextlib.ExitStack() as stack:
        yield lambda config, **kwargs: stack.enter_context(ServerThread(config, **kwargs))


@pytest.fixture(scope="module")
def server(tiny_model_path, start_server):
    """The test module's server unless it defines its own: the tiny checkpoint, the engine on a thread of
    the server's process, default options."""
    return start_server(engine_config(tiny_model_path))


@pytest.fixture(scope="module")
def http(server):
    """An httpx client (timeout 60 s) on the test module's `server`."""
    with http_client(server) as client:
        yield client


@pytest.fixture(scope="module")
def client(server):
    """The official openai client on the test module's `server`."""
    return openai_client(server)


@pytest.fixture
def script(server, monkeypatch):
    """script(pieces): the test module's `server` answers every request with `pieces`, one token each step."""
    return lambda pieces: script_answers(monkeypatch, server, pieces)


@pytest.fixture
def engine_calls(server, monkeypatch) -> list[str]:
    """The request ids the server hands to the engine during the test (add_request still runs)."""
    calls: list[str] = []
    add_request = server.async_engine.add_request

    async def counting(request_id, prompt_ids, params, priority=0):
        calls.append(request_id)
        return await add_request(request_id, prompt_ids, params, priority)

    monkeypatch.setattr(server.async_engine, "add_request", counting)
    return calls


@pytest.fixture
def slow_steps(server):
    """Each engine step takes >= 20 ms, so requests stay in flight long enough to act on them
    (uses the `server` fixture of the test module)."""
    engine = server.async_engine.engine
    fast_step = engine.step

    def slow_step():
        time.sleep(0.02)
        return fast_step()

    engine.step = slow_step
    yield
    del engine.step
