"""Fixtures: tiny random checkpoints for engine tests (see checkpoints.py)."""
import pytest

from tests.engine.checkpoints import ARCHS, write_checkpoint


@pytest.fixture(scope="session", params=list(ARCHS))
def checkpoint(request, tmp_path_factory):
    """(folder, transformers model) for each tiny architecture."""
    path = tmp_path_factory.mktemp(f"tiny-{request.param}")
    return str(path), write_checkpoint(path, request.param)


@pytest.fixture(scope="session")
def qwen3_checkpoint(tmp_path_factory):
    path = tmp_path_factory.mktemp("tiny-qwen3-only")
    return str(path), write_checkpoint(path, "qwen3", seed=1)
