"""IncrementalDetokenizer: new token ids -> text delta, O(new tokens) per step, never half a character.

Scheme (prefix / read offsets over token strings): `tokens[prefix:read]` is a short window already turned
into text; each step decodes `tokens[prefix:]` and emits what it adds beyond the window's own text. The
window gives the decoder its left context (leading-space rules of sentencepiece, byte-level merges), so
the delta is right without decoding the whole sequence. A decode that ends in U+FFFD is an incomplete
UTF-8 character: nothing is emitted until a later token completes it.

Stop strings live in engine/stop_strings.py (StopStringChecker, re-exported here).
"""
from __future__ import annotations

from collections.abc import Sequence

from engine.stop_strings import StopStringChecker

__all__ = ["IncrementalDetokenizer", "StopStringChecker"]

# Prompt tokens used as left context for the first output tokens.
_NUM_CONTEXT_TOKENS = 5
_REPLACEMENT_CHAR = "\ufffd"
# A character cut by the end of a prompt left at most this many of its tokens (bytes) in it.
_MAX_PARTIAL_TOKENS = 3


def special_token_ids(tokenizer) -> frozenset[int]:
    """The ids `tokenizer.decode(..., skip_special_tokens=True)` drops: the special tokens' map
    (all_special_ids) and every added token the tokenizer.json marks special (Llama 3's
    `<|start_header_id|>` is only there), as vLLM's detokenizer skips them."""
    added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
    return frozenset(tokenizer.all_special_ids) | {i for i, tok in added.items() if getattr(tok, "special", False)}


class IncrementalDetokenizer:
    """Turns one sequence's output token ids into text, step by step.

    tokenizer: a transformers tokenizer (convert_ids_to_tokens / convert_tokens_to_string / all_special_ids,
        added_tokens_decoder).
    prompt_token_ids: its last few tokens are the left context of the first output token.
    skip_special_tokens: drop special tokens from the text (those `special_token_ids` names).
    spaces_between_special_tokens: accepted for API parity with vLLM; fast tokenizers (the only ones the
        engine loads) decode special tokens as written, which is what this class does either way.
    """

    def __init__(self, tokenizer, prompt_token_ids: Sequence[int], skip_special_tokens: bool = True,
                 spaces_between_special_tokens: bool = True) -> None:
        self.tokenizer = tokenizer
        self.skip_special_tokens = skip_special_tokens
        self.spaces_between_special_tokens = spaces_between_special_tokens
        self._skip_ids = special_token_ids(tokenizer) if skip_special_tokens else frozenset()
        self._tokens: list[str] = self._context_tokens(list(prompt_token_ids))
        self._prefix, self._read = 0, self._complete_prefix_len(self._tokens)
        # The window's text with the prompt's unfinished character, while the output has not settled it
        self._prompt_text = (self.tokenizer.convert_tokens_to_string(self._tokens)
                             if self._read < len(self._tokens) else None)
        self.num_tokens = 0

    def append(self, new_token_ids: Sequence[int]) -> str:
        """Take the next output token ids; return the text they complete (may be "" while a character is
        still partial). The deltas are the text; it is not kept here (engine/output_text.py keeps it)."""
        parts = []
        for token_id in new_token_ids:
            self.num_tokens += 1
            new = self._to_tokens([token_id])
            if not new:
                continue
            self._tokens.extend(new)
            parts.append(self._advance())
        return "".join(parts)

    def flush(self) -> str:
        """At the end of the sequence: the text still held back (a character left incomplete decodes to
        U+FFFD, as `tokenizer.decode` gives it)."""
        full_text = self.tokenizer.convert_tokens_to_string(self._tokens[self._prefix:])
        delta = full_text[self._emitted_len(full_text):]
        self._move_window()
        return delta

    def _advance(self) -> str:
        """Decode the window plus the pending tokens; emit the new text unless it ends mid-character."""
        full_text = self.tokenizer.convert_tokens_to_string(self._tokens[self._prefix:])
        emitted_len = self._emitted_len(full_text)
        if len(full_text) <= emitted_len or full_text.endswith(_REPLACEMENT_CHAR):
            return ""
        delta = full_text[emitted_len:]
        self._move_window()
        return delta

    def _emitted_len(self, full_text: str) -> int:
        """How much of `full_text` (the window's decode plus the pending tokens) is not output: the window's
        text; while the prompt's last character is unfinished, the prompt's text with it (U+FFFD) where
        the output did not complete it (bytes that never make a character stay the prompt's)."""
        if self._prompt_text is not None and full_text.startswith(self._prompt_text):
            return len(self._prompt_text)
        return len(self.tokenizer.convert_tokens_to_string(self._tokens[self._prefix:self._read]))

    def _move_window(self) -> None:
        """The pending tokens become the next window; drop what lies before it to stay O(window)."""
        del self._tokens[:self._read]
        self._prefix, self._read = 0, len(self._tokens)
        self._prompt_text = None

    def _context_tokens(self, prompt_token_ids: list[int]) -> list[str]:
        """The prompt's last few tokens as the window's start, taken further back (at most 3 tokens: a
        UTF-8 character has at most 4 bytes) while it would start inside a character."""
        start = max(0, len(prompt_token_ids) - _NUM_CONTEXT_TOKENS)
        tokens = self._to_tokens(prompt_token_ids[start:])
        for _ in range(_MAX_PARTIAL_TOKENS):
            if start == 0 or not self.tokenizer.convert_tokens_to_string(tokens).startswith(_REPLACEMENT_CHAR):
                break
            start -= 1
            tokens = self._to_tokens(prompt_token_ids[start:start + 1]) + tokens
        return tokens

    def _complete_prefix_len(self, tokens: list[str]) -> int:
        """How many of the window's tokens decode to whole characters: a prompt (given as token ids) that
        ends inside a character leaves its last bytes (at most 3 tokens) pending, so the first output
        tokens complete that character in the output text instead of losing it (as vLLM's detokenizer)."""
        read = len(tokens)
        while (read > 0 and len(tokens) - read < _MAX_PARTIAL_TOKENS
               and self.tokenizer.convert_tokens_to_string(tokens[:read]).endswith(_REPLACEMENT_CHAR)):
            read -= 1
        return read

    def _to_tokens(self, ids: Sequence[int]) -> list[str]:
        """Token strings of `ids`, without special tokens when they are skipped (unknown ids give none)."""
        out = []
        for token_id in ids:
            if token_id in self._skip_ids:
                continue
            token = self.tokenizer.convert_ids_to_tokens(int(token_id))
            if token is not None:
                out.append(token)
        return out
