"""vLLM's `bad_words`: words a request must never generate, as token-id sequences and per-step bans.

A word is banned by banning its last token whenever the request's output so far ends with the word's
other tokens (a one-token word: always). Each word is tokenized twice, as vLLM does, so that it is
banned both at the start of the text and after a space: once without leading spaces, and once with
one leading space, kept only when that spelling has as many tokens as the first and starts with a
different token (a word-start token of its own).
"""
from __future__ import annotations

from typing import Protocol, Sequence

TokenSequences = tuple[tuple[int, ...], ...]


class Encoder(Protocol):
    def encode(self, text: str, add_special_tokens: bool = ...) -> list[int]: ...


def bad_words_token_ids(words: Sequence[str] | None, tokenizer: Encoder, vocab_size: int) -> TokenSequences:
    """The token-id sequences to ban for `words` (None or empty: none). A token id outside
    [0, vocab_size) is a ValueError naming the field (the tokenizer knows more tokens than the model)."""
    sequences: list[tuple[int, ...]] = []
    for word in words or ():
        bare = tuple(tokenizer.encode(word.lstrip(), add_special_tokens=False))
        spaced = tuple(tokenizer.encode(" " + word.lstrip(), add_special_tokens=False))
        sequences.append(bare)
        if len(spaced) == len(bare) and spaced[0] != bare[0]:
            sequences.append(spaced)
    bad = sorted({t for seq in sequences for t in seq if not 0 <= t < vocab_size})
    if bad:
        raise ValueError(f"bad_words must tokenize to token ids in [0, {vocab_size}), but these were not: "
                         f"{bad[:5]}; remove the words that hold them")
    return tuple(dict.fromkeys(sequences))


def banned_token_ids(sequences: TokenSequences, output_token_ids: Sequence[int]) -> list[int]:
    """The token ids to ban at the next step: the last token of each sequence whose other tokens end
    `output_token_ids` (the request's generated tokens; the prompt never counts, as in vLLM)."""
    banned = []
    num_output = len(output_token_ids)
    for seq in sequences:
        prefix_len = len(seq) - 1
        if prefix_len > num_output:
            continue
        if prefix_len == 0 or tuple(output_token_ids[num_output - prefix_len:]) == seq[:-1]:
            banned.append(seq[-1])
    return banned
