"""IncrementalDetokenizer on a Llama-2 style tokenizer (sentencepiece pieces, byte fallback, a decoder
that strips the first space) and on special tokens that only the tokenizer.json marks special (as
Llama 3's `<|start_header_id|>`): deltas match `tokenizer.decode` of prompt + output (CPU)."""
from __future__ import annotations

import random

import pytest
from tokenizers import AddedToken, Tokenizer, decoders, models, normalizers
from transformers import PreTrainedTokenizerFast

from engine.detokenizer import IncrementalDetokenizer

PIECES = ["Hello", " world", "😀", "世界", " ", "\n", "a", "b", "!", "é", "  ", "<|header|>", "<think>"]


def sentencepiece_tokenizer() -> PreTrainedTokenizerFast:
    """Byte-fallback BPE with ▁ for spaces; `<|header|>` special in the tokenizer.json only (not in
    all_special_ids, as Llama 3's header tokens), `<think>` an added token that is not special."""
    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2}
    vocab.update({f"<0x{b:02X}>": 3 + b for b in range(256)})
    for piece in ["▁", "▁Hello", "▁world", "a", "b", "▁a", "Hello", "world", "!"]:
        vocab.setdefault(piece, len(vocab))
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True, fuse_unk=True))
    tok.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse(),
                                     decoders.Strip(" ", 1, 0)])
    tok.add_special_tokens([AddedToken("<|header|>", special=True)])
    tok.add_tokens([AddedToken("<think>", special=False)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", unk_token="<unk>")


def expected_delta(tok, prompt: list[int], ids: list[int], skip: bool) -> str:
    """What the output adds to the decoded prompt (the prompt gives the first token its leading space)."""
    return tok.decode(prompt + ids, skip_special_tokens=skip)[len(tok.decode(prompt, skip_special_tokens=skip)):]


def test_a_token_special_only_in_tokenizer_json_is_skipped_as_decode_skips_it():
    tok = sentencepiece_tokenizer()
    header = tok.convert_tokens_to_ids("<|header|>")
    assert header not in tok.all_special_ids
    ids = tok.encode("a<|header|>b", add_special_tokens=False)
    assert header in ids
    detok = IncrementalDetokenizer(tok, [tok.bos_token_id], skip_special_tokens=True)
    text = "".join(detok.append([i]) for i in ids) + detok.flush()
    assert "<|header|>" not in text
    assert text == expected_delta(tok, [tok.bos_token_id], ids, True)
    kept = IncrementalDetokenizer(tok, [tok.bos_token_id], skip_special_tokens=False)
    assert "<|header|>" in kept.append(ids) + kept.flush()


@pytest.mark.parametrize("skip", [True, False])
def test_random_texts_stream_as_decode_of_prompt_and_output(skip):
    tok = sentencepiece_tokenizer()
    rng = random.Random(3)
    for _ in range(150):
        ids = tok.encode("".join(rng.choice(PIECES) for _ in range(rng.randint(1, 10))), add_special_tokens=False)
        prompt = tok.encode("".join(rng.choice(PIECES) for _ in range(3)), add_special_tokens=True)
        detok = IncrementalDetokenizer(tok, prompt, skip)
        deltas = [detok.append([i]) for i in ids]
        deltas.append(detok.flush())
        assert "".join(deltas) == expected_delta(tok, prompt, ids, skip), ids
        assert not any("\ufffd" in d for d in deltas)
