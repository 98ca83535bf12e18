"""The built-in byte-level tokenizer behaves like a Hugging Face tokenizer."""
from __future__ import annotations

from models.loader import load_tokenizer, resolve_model
from models.presets import get_preset, preset_names
from models.tokenizer import BYTE_VOCAB_SIZE, SPECIAL_TOKENS, special_token_id


def tokenizer():
    return load_tokenizer(resolve_model("preset:tiny-qwen3"))


def test_round_trips_utf8_and_maps_bytes_to_ids():
    tok = tokenizer()
    text = "Grüße, 世界! 🦀🚀 tabs\tand\nnewlines  "
    ids = tok.encode(text, add_special_tokens=False)
    assert ids == list(text.encode("utf-8"))
    assert tok.decode(ids) == text
    assert tok.convert_ids_to_tokens(ids[:2]) == ["G", "r"]


def test_special_tokens_are_single_ids_and_eos_is_set():
    tok = tokenizer()
    for token in SPECIAL_TOKENS:
        assert tok.encode(token, add_special_tokens=False) == [special_token_id(token)]
    assert tok.eos_token == "<|endoftext|>" and tok.eos_token_id == special_token_id("<|endoftext|>")
    ids = tok.encode("hi<|im_end|>", add_special_tokens=False)
    assert tok.decode(ids, skip_special_tokens=True) == "hi"


def test_chat_template_renders_chatml():
    tok = tokenizer()
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi 👋"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    assert text == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi 👋<|im_end|>\n"
                    "<|im_start|>assistant\n")
    assert tok.decode(tok.encode(text, add_special_tokens=False)) == text


def test_vocab_fits_every_preset():
    assert len(tokenizer()) == BYTE_VOCAB_SIZE
    for name in preset_names():
        config = get_preset(name)
        assert BYTE_VOCAB_SIZE <= config.vocab_size
        assert all(i < BYTE_VOCAB_SIZE for i in config.eos_token_id)
