"""Logit processors applied before sampling: the allowed_token_ids mask, logit bias, the banned tokens
(min_tokens, bad_words) and penalties.

Each takes logits `[N, V] float32` and the step's SamplingMetadata and returns logits of the same shape;
the input tensor is never written (the first processor that runs makes the copy the rest write into).
"""
from __future__ import annotations

import torch

from engine.sampling_metadata import SamplingMetadata


def apply_logit_processors(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """The allowed_token_ids mask (first, as vLLM's), logit bias, the banned tokens (min_tokens, bad_words),
    then penalties; returns `logits` itself when none applies."""
    if meta.no_logit_processors:
        return logits
    logits = logits.clone()
    if not meta.no_allowed_token_ids:
        apply_allowed_token_ids_(logits, meta)
    if not meta.no_logit_bias:
        logits.index_put_((meta.logit_bias_rows, meta.logit_bias_token_ids), meta.logit_bias_values,
                          accumulate=True)
    if not meta.no_banned_tokens:
        logits[meta.banned_rows, meta.banned_token_ids] = float("-inf")
    if not meta.no_penalties:
        apply_penalties_(logits, meta)
    return logits


def apply_allowed_token_ids_(logits: torch.Tensor, meta: SamplingMetadata) -> None:
    """In place, on contiguous logits `[N, V]`: every logit of an allowed_rows row is -inf but its allowed
    tokens'."""
    flat = logits.view(-1)
    kept = flat[meta.allowed_flat_ids]
    logits.index_fill_(0, meta.allowed_rows, float("-inf"))
    flat[meta.allowed_flat_ids] = kept


def apply_penalties_(logits: torch.Tensor, meta: SamplingMetadata) -> None:
    """In place. Repetition (tokens seen in prompt or output: positive logits / r, negative * r),
    then frequency (- f * count of the token in the output) and presence (- p if it occurred)."""
    counts = meta.output_token_counts                                  # [N, V] float32
    occurred = counts > 0
    if meta.prompt_token_mask is not None:
        rep = meta.repetition_penalty.unsqueeze(1)                     # [N, 1]
        seen = occurred | meta.prompt_token_mask
        scaled = torch.where(logits > 0, logits / rep, logits * rep)
        torch.where(seen, scaled, logits, out=logits)
    logits.sub_(counts * meta.frequency_penalty.unsqueeze(1))
    logits.sub_(occurred.to(logits.dtype) * meta.presence_penalty.unsqueeze(1))
