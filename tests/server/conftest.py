"""Fixtures of the server tests: the tiny checkpoint (once per session) and the offline reference engine."""
from __future__ import annotations

import time

import pytest

from engine.llm_engine import LLMEngine
from server_harness import engine_config, write_tiny_qwen3


@pytest.fixture(scope="session")
def tiny_model_path(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("server-tiny-qwen3")
    write_tiny_qwen3(path)
    return str(path)


@pytest.fixture(scope="session")
def reference_engine(tiny_model_path) -> LLMEngine:
    return LLMEngine(engine_config(tiny_model_path))


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
