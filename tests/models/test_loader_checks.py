"""What the loader refuses before building a model, with errors that say what to change: a folder
without a tokenizer, architectures and checkpoints the engine cannot run (checked before a hub
checkpoint's weights are downloaded)."""
from __future__ import annotations

import pytest

from models.loader import load_tokenizer, resolve_model
from models.presets import tiny_qwen3
from models.tokenizer import byte_tokenizer


def test_model_folder_without_tokenizer_files_is_an_error(tmp_path):
    """transformers 5 builds an empty tokenizer (every text -> no ids) from a folder with only config.json."""
    tiny_qwen3().save_pretrained(tmp_path)
    with pytest.raises(ValueError, match=r"model folder .* has no tokenizer .*tokenizer\.json.*--tokenizer"):
        load_tokenizer(resolve_model(str(tmp_path)))
    other = tmp_path / "tok"
    byte_tokenizer().save_pretrained(other)
    tokenizer = load_tokenizer(resolve_model(str(tmp_path)), str(other))
    assert tokenizer("hi").input_ids == [ord("h"), ord("i")]


def test_given_tokenizer_folder_without_files_is_an_error(tmp_path):
    tiny_qwen3().save_pretrained(tmp_path)
    byte_tokenizer().save_pretrained(tmp_path)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="tokenizer folder .*empty.* has no tokenizer"):
        load_tokenizer(resolve_model(str(tmp_path)), str(empty))
