"""Fixtures of the server tests: the tiny checkpoint (once per session) and the offline reference engine."""
from __future__ import annotations

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
