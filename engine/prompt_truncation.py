"""vLLM's `truncate_prompt_tokens` and the vocabulary checks of `allowed_token_ids` and `logit_bias`: what
LLMEngine.add_request (and the server, before its own prompt checks) does to a request's prompt ids and
allowed ids, and refuses before the request is queued."""
from __future__ import annotations

from engine.checks import check


def check_truncate_prompt_tokens(truncate_prompt_tokens: int | None) -> None:
    """vLLM's rule: None, -1 or an integer >= 1 (a ValueError naming the field, vLLM's message)."""
    k = truncate_prompt_tokens
    check(k is None or (isinstance(k, int) and not isinstance(k, bool) and (k >= 1 or k == -1)),
          "truncate_prompt_tokens", k, "must be an integer >= 1 or -1")


def truncate_prompt(token_ids: list[int], truncate_prompt_tokens: int | None, max_model_len: int) -> list[int]:
    """The prompt's last `truncate_prompt_tokens` ids (-1: the last max_model_len; None: all of them).
    Another value than vLLM's, or one above max_model_len, is a ValueError naming the field (vLLM's messages)."""
    check_truncate_prompt_tokens(truncate_prompt_tokens)
    if truncate_prompt_tokens is None:
        return token_ids
    k = max_model_len if truncate_prompt_tokens == -1 else truncate_prompt_tokens
    if k > max_model_len:
        raise ValueError(f"truncate_prompt_tokens value ({k}) is greater than max_model_len ({max_model_len}). "
                         "Please, select a smaller truncation size.")
    return token_ids[-k:]


def check_allowed_token_ids(allowed_token_ids: list[int] | None, vocab_size: int) -> None:
    """A ValueError naming the field unless every allowed id is in [0, vocab_size)."""
    bad = [t for t in allowed_token_ids or () if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"allowed_token_ids must be token ids in [0, {vocab_size}), got {bad[:5]}")


def check_logit_bias(logit_bias: dict[int, float] | None, vocab_size: int) -> None:
    """vLLM's ValueError (its message) unless every logit_bias key is a token id in [0, vocab_size)."""
    bad = [t for t in logit_bias or () if not 0 <= t < vocab_size]
    if bad:
        raise ValueError(f"token_id(s) {bad} in logit_bias contain out-of-vocab token ids. "
                         f"Vocabulary size: {vocab_size}")
