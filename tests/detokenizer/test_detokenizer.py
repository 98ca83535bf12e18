"""IncrementalDetokenizer on byte-level BPE tokenizers: deltas, partial UTF-8, special tokens (CPU)."""
from __future__ import annotations

import random

import pytest
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import PreTrainedTokenizerFast

from engine.detokenizer import IncrementalDetokenizer
from models.tokenizer import byte_tokenizer

PIECES = ["Hello", " world", "😀", "🎉", "世界", "日本語", "é", "ß", " ", "\n", "a", "Ωμέγα", "👩‍👩‍👧", "!", "ok"]


def byte_chars() -> dict[int, str]:
    """The GPT-2 byte-to-unicode alphabet (printable bytes as themselves, the rest shifted past 255)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    mapping, extra = {}, 0
    for b in range(256):
        mapping[b] = chr(b) if b in printable else chr(256 + extra)
        extra += b not in printable
    return mapping


def merged_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-level BPE whose merges glue the first two bytes of multi-byte characters (so one token holds
    half a character) plus a few ASCII words."""
    chars = byte_chars()
    vocab = {c: b for b, c in chars.items()}
    merges = []
    for text in ["😀", "🎉", "世", "界", "日", "é", "Ω", "he", "ll", "wo"]:
        a, b = (chars[x] for x in text.encode()[:2])
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
            merges.append((a, b))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<|endoftext|>",
                                   additional_special_tokens=["<|im_end|>"])


TOKENIZERS = {"bytes": byte_tokenizer, "merged": merged_tokenizer}


def random_text(rng: random.Random, num_pieces: int) -> str:
    return "".join(rng.choice(PIECES) for _ in range(num_pieces))


@pytest.mark.parametrize("name", list(TOKENIZERS))
@pytest.mark.parametrize("skip_special_tokens", [True, False])
def test_deltas_concatenate_to_decode_and_never_split_characters(name, skip_special_tokens):
    tok = TOKENIZERS[name]()
    rng = random.Random(7)
    special = tok.convert_tokens_to_ids("<|im_end|>")
    for trial in range(5):
        head, tail = random_text(rng, 15), random_text(rng, 15)   # the special token sits between characters
        ids = tok.encode(head, add_special_tokens=False) + [special] + tok.encode(tail, add_special_tokens=False)
        expected = tok.decode(ids, skip_special_tokens=skip_special_tokens)
        prompt = tok.encode(random_text(rng, 4), add_special_tokens=False)
        detok = IncrementalDetokenizer(tok, prompt, skip_special_tokens)
        deltas = [detok.append([i]) for i in ids]
        assert "".join(deltas) == expected
        assert not any("\ufffd" in d for d in deltas)
        assert sum(d == "" for d in deltas) > 0          # some characters really were held back


def test_multi_token_appends_match_single_token_appends():
    tok = merged_tokenizer()
    ids = tok.encode("😀世界 é 🎉🎉 hello world 日本語", add_special_tokens=False)
    one = IncrementalDetokenizer(tok, [], True)
    singles = [one.append([i]) for i in ids]
    many = IncrementalDetokenizer(tok, [], True)
    chunks, pos, rng = [], 0, random.Random(1)
    while pos < len(ids):
        step = rng.randint(1, 4)
        chunks.append(many.append(ids[pos:pos + step]))
        pos += step
    assert "".join(singles) == "".join(chunks) == tok.decode(ids)
    assert not any("\ufffd" in c for c in chunks)


def test_emoji_split_over_bytes_emits_once_complete():
    tok = byte_tokenizer()
    ids = tok.encode("a😀", add_special_tokens=False)
    assert len(ids) == 5
    detok = IncrementalDetokenizer(tok, [1, 2, 3], True)
    assert [detok.append([i]) for i in ids] == ["a", "", "", "", "😀"]


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_a_prompt_ending_inside_a_character_has_it_completed_in_the_output(name):
    """Token-id prompts may stop inside a character; its bytes are not lost: the output starts with the
    character the first output tokens complete (vLLM's detokenizer keeps such bytes pending too)."""
    tok = TOKENIZERS[name]()
    rng = random.Random(11)
    for text in ["ab😀x y", "世界!", "Ωμέγα ok", *(random_text(rng, 12) for _ in range(6))]:
        ids = tok.encode(text, add_special_tokens=False)
        for cut in range(1, len(ids)):
            prompt, output = ids[:cut], ids[cut:]
            if not tok.decode(prompt).endswith("\ufffd"):
                continue
            detok = IncrementalDetokenizer(tok, prompt)
            text_out = "".join(detok.append([t]) for t in output) + detok.flush()
            whole_prompt = tok.decode(prompt).rstrip("\ufffd")
            assert text_out == text[len(whole_prompt):], (text, cut)


@pytest.mark.parametrize("name", list(TOKENIZERS))
def test_prompt_bytes_that_never_make_a_character_stay_out_of_the_output(name):
    """A prompt ending in bytes no output completes (an invalid lead byte, or half a character the output
    does not go on with): the output is what follows them, without their U+FFFD."""
    tok = TOKENIZERS[name]()
    invalid = tok.convert_tokens_to_ids(byte_chars()[0xF8])
    half_emoji = tok.encode("😀", add_special_tokens=False)[:1]
    for tail in ([invalid], half_emoji):
        prompt = tok.encode("say ", add_special_tokens=False) + tail
        assert tok.decode(prompt).endswith("\ufffd")
        for text in ["no way", "😀 ok", "世界", "a"]:
            detok = IncrementalDetokenizer(tok, prompt)
            output = tok.encode(text, add_special_tokens=False)
            assert "".join(detok.append([t]) for t in output) + detok.flush() == text, (tail, text)


def test_skip_special_tokens_drops_eos_text():
    tok = byte_tokenizer()
    ids = tok.encode("hi", add_special_tokens=False) + [tok.eos_token_id]
    assert IncrementalDetokenizer(tok, [], True).append(ids) == "hi"
    assert IncrementalDetokenizer(tok, [], False).append(ids) == "hi<|endoftext|>"


def test_work_per_step_is_bounded():
    tok = byte_tokenizer()
    detok = IncrementalDetokenizer(tok, tok.encode("prompt"), True)
    ids = tok.encode("😀 abc 世界 " * 200, add_special_tokens=False)
    deltas = []
    for i in ids:
        deltas.append(detok.append([i]))
        assert len(detok._tokens) <= 9     # 5 prompt tokens or the last emitted ones + a pending 4-byte char
    assert "".join(deltas) == tok.decode(ids)
