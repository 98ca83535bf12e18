"""SamplingMetadata: one step's sampling settings for a batch of requests, as device tensors.

Built once per step from the requests whose logits are sampled (row i = requests[i]). Settings that are
at their defaults for every row become `None` (and a flag), so the sampler skips that work entirely.
The build is vectorized: one list comprehension over the batch packs the numeric settings into a single
CPU tensor that is copied to the device once; only rows that use a rare feature (seed, logit_bias,
allowed_token_ids, structured choices, min_tokens, bad_words, logprobs, penalties) get any further
per-request Python.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from itertools import chain

import numpy as np
import torch

from engine.bad_words import banned_token_ids
from engine.request import Request

# Columns of the packed per-row settings tensor.
_TEMP, _TOP_P, _MIN_P, _PRES, _FREQ, _REP, _TOP_K, _SPECIAL = range(8)
_NUM_COLS = 8


@dataclass
class SamplingMetadata:
    """Per-row sampling settings for `num_reqs` rows of logits `[num_reqs, vocab_size]`.

    temperature `[N] float32`: greedy rows hold 1.0 (they take the argmax and never divide).
    greedy_mask `[N] bool`: None when all rows are greedy or none is.
    top_k `[N] int64` (disabled rows hold vocab_size), top_p `[N] float32`, min_p `[N] float32`:
        None when no random row uses that filter; `max_top_k`: the largest top_k among rows that use it;
        `top_k_all_rows`: every random row has a top_k (top-p then works on the top-k candidates only).
    presence/frequency/repetition_penalty `[N] float32`: None when `no_penalties`.
    output_token_counts `[N, V] float32`: how often each token was generated so far (rows without
        penalties are zero); prompt_token_mask `[N, V] bool`: tokens in the prompt, only when some row
        has repetition_penalty != 1.
    logit_bias_rows / _token_ids `int64`, logit_bias_values `float32` `[num_entries]`: added to logits.
    allowed_rows `[R] int64`: the rows with allowed_token_ids or a structured choice (their other logits
        become -inf);
        allowed_flat_ids `[num_entries] int64`: `row * vocab_size + token` for each of their allowed tokens.
    banned_rows / _token_ids `[num_entries] int64`: set to -inf (the EOS ids and stop_token_ids before
        min_tokens, even with ignore_eos, as vLLM; the bad_words tokens that would end a bad word).
    max_num_logprobs: largest `logprobs` asked in the batch (None: no row asked).
    seeds: `(row, seed, step)` for each random row with a seed; step = that request's
        num_output_tokens, so the noise depends only on (seed, step), never on the batch.
    reusable: nothing here depends on the step (no penalties, seeds, min_tokens, logit_bias,
        allowed_token_ids or logprobs), so the next step may reuse it for the same requests in the same
        order.
    """

    num_reqs: int
    vocab_size: int
    temperature: torch.Tensor
    all_greedy: bool
    all_random: bool
    greedy_mask: torch.Tensor | None = None
    top_k: torch.Tensor | None = None
    max_top_k: int = 0
    top_k_all_rows: bool = False
    top_p: torch.Tensor | None = None
    min_p: torch.Tensor | None = None
    no_penalties: bool = True
    presence_penalty: torch.Tensor | None = None
    frequency_penalty: torch.Tensor | None = None
    repetition_penalty: torch.Tensor | None = None
    output_token_counts: torch.Tensor | None = None
    prompt_token_mask: torch.Tensor | None = None
    logit_bias_rows: torch.Tensor | None = None
    logit_bias_token_ids: torch.Tensor | None = None
    logit_bias_values: torch.Tensor | None = None
    allowed_rows: torch.Tensor | None = None
    allowed_flat_ids: torch.Tensor | None = None
    banned_rows: torch.Tensor | None = None
    banned_token_ids: torch.Tensor | None = None
    max_num_logprobs: int | None = None
    seeds: list[tuple[int, int, int]] = field(default_factory=list)
    reusable: bool = False

    @property
    def no_top_k_top_p(self) -> bool:
        return self.top_k is None and self.top_p is None

    @property
    def no_logit_bias(self) -> bool:
        return self.logit_bias_rows is None

    @property
    def no_allowed_token_ids(self) -> bool:
        return self.allowed_rows is None

    @property
    def no_banned_tokens(self) -> bool:
        return self.banned_rows is None

    @property
    def no_logit_processors(self) -> bool:
        """No allowed_token_ids, logit bias, banned tokens or penalties: the logits reach sampling as
        the model gave them."""
        return self.no_logit_bias and self.no_banned_tokens and self.no_penalties and self.no_allowed_token_ids

    @classmethod
    def from_requests(cls, requests: list[Request], vocab_size: int, device: torch.device) -> SamplingMetadata:
        """Build the metadata for `requests` (row i = requests[i]) with tensors on `device`."""
        if not requests:
            raise ValueError("requests must hold at least one request, got []")
        sps = [r.sampling_params for r in requests]
        n = len(requests)
        packed = np.fromiter(chain.from_iterable(
            (sp.temperature, sp.top_p, sp.min_p, sp.presence_penalty, sp.frequency_penalty, sp.repetition_penalty,
             sp.top_k, sp.uses_rare_features) for sp in sps), dtype=np.float32, count=n * _NUM_COLS)
        host = torch.from_numpy(packed).view(n, _NUM_COLS)
        greedy = host[:, _TEMP] == 0
        num_greedy = int(greedy.sum())
        all_greedy, all_random = num_greedy == n, num_greedy == 0
        # Greedy rows: temperature 1 (never used) and no filters, so they never enable a filter path.
        host[:, _TEMP].masked_fill_(greedy, 1.0)
        host[greedy, _TOP_P] = 1.0
        host[greedy, _MIN_P] = 0.0
        top_k = host[:, _TOP_K]
        top_k.masked_fill_((top_k <= 0) | (top_k > vocab_size) | greedy, float(vocab_size))
        dev = _to_device(host[:, :_SPECIAL], device)
        meta = cls(num_reqs=n, vocab_size=vocab_size, temperature=dev[:, _TEMP],
                   all_greedy=all_greedy, all_random=all_random)
        if not (all_greedy or all_random):
            meta.greedy_mask = _to_device(greedy, device)
        if not all_greedy:
            enabled = top_k < vocab_size
            if bool(enabled.any()):
                meta.top_k, meta.max_top_k = dev[:, _TOP_K].long(), int(top_k[enabled].max())
                meta.top_k_all_rows = bool((enabled | greedy).all())
            if bool((host[:, _TOP_P] < 1).any()):
                meta.top_p = dev[:, _TOP_P]
            if bool((host[:, _MIN_P] > 0).any()):
                meta.min_p = dev[:, _MIN_P]
        _add_penalties(meta, requests, host, dev, device)
        _add_rare_features(meta, requests, host[:, _SPECIAL], greedy, device)
        meta.reusable = meta.no_penalties and not bool(host[:, _SPECIAL].any())
        return meta


def _add_penalties(meta: SamplingMetadata, requests: list[Request], host: torch.Tensor, dev: torch.Tensor,
                   device: torch.device) -> None:
    """Fill the penalty tensors, output token counts and prompt mask when any row has a penalty."""
    uses_rep = host[:, _REP] != 1
    uses_any = (host[:, _PRES] != 0) | (host[:, _FREQ] != 0) | uses_rep
    if not bool(uses_any.any()):
        return
    meta.no_penalties = False
    meta.presence_penalty, meta.frequency_penalty = dev[:, _PRES], dev[:, _FREQ]
    meta.repetition_penalty = dev[:, _REP]
    rows = uses_any.nonzero().flatten().tolist()
    counts = torch.zeros(meta.num_reqs * meta.vocab_size, dtype=torch.float32, device=device)
    flat = _flat_token_index(rows, [requests[i].output_token_ids for i in rows], meta.vocab_size, device)
    counts.index_add_(0, flat, torch.ones(flat.numel(), dtype=torch.float32, device=device))
    meta.output_token_counts = counts.view(meta.num_reqs, meta.vocab_size)
    rep_rows = uses_rep.nonzero().flatten().tolist()
    if rep_rows:
        mask = torch.zeros(meta.num_reqs * meta.vocab_size, dtype=torch.bool, device=device)
        flat = _flat_token_index(rep_rows, [requests[i].prompt_token_ids for i in rep_rows], meta.vocab_size, device)
        mask[flat] = True
        meta.prompt_token_mask = mask.view(meta.num_reqs, meta.vocab_size)


def _flat_token_index(rows: list[int], token_lists: list[list[int]], vocab_size: int,
                      device: torch.device) -> torch.Tensor:
    """`row * vocab_size + token` for every token of every listed row, as an int64 device tensor."""
    lens = np.fromiter((len(t) for t in token_lists), dtype=np.int64, count=len(rows))
    tokens = np.fromiter(chain.from_iterable(token_lists), dtype=np.int64, count=int(lens.sum()))
    if tokens.size and (tokens.min() < 0 or tokens.max() >= vocab_size):
        raise ValueError(f"token ids must be in [0, {vocab_size}), got {int(tokens.min())}..{int(tokens.max())}")
    flat = np.repeat(np.asarray(rows, dtype=np.int64), lens) * vocab_size + tokens
    return _to_device(torch.from_numpy(flat), device)


def _add_rare_features(meta: SamplingMetadata, requests: list[Request], special: torch.Tensor,
                       greedy: torch.Tensor, device: torch.device) -> None:
    """Seeds, logit_bias, allowed_token_ids, the banned tokens (min_tokens, bad_words) and logprobs: Python
    only for rows that use them (special `[N] float32` is 1 for those rows)."""
    special = special.nonzero().flatten().tolist()
    bias_rows, bias_ids, bias_vals, ban_rows, ban_ids = [], [], [], [], []
    greedy_list = greedy.tolist() if special else []
    max_lp = None
    allowed: dict[int, list[int]] = {}
    for i in special:
        r = requests[i]
        sp = r.sampling_params
        if sp.seed is not None and not greedy_list[i]:
            meta.seeds.append((i, sp.seed, r.num_output_tokens + r.num_inflight))
        if sp.logprobs is not None:
            max_lp = sp.logprobs if max_lp is None else max(max_lp, sp.logprobs)
        for tok, val in (sp.logit_bias or {}).items():
            tok = int(tok)
            if not 0 <= tok < meta.vocab_size:
                raise ValueError(f"logit_bias token ids must be in [0, {meta.vocab_size}), got {tok}")
            bias_rows.append(i), bias_ids.append(tok), bias_vals.append(float(val))
        ids = _allowed_ids(r)
        if ids is not None:
            allowed[i] = ids
        if r.choice is None and r.num_output_tokens + r.num_inflight < sp.min_tokens:
            # every end-of-sequence id, ignore_eos or not (vLLM's _all_stop_token_ids)
            banned = set(sp.stop_token_ids or ()) | set(r.eos_token_ids)
            banned = sorted(t for t in banned if 0 <= t < meta.vocab_size)
            ban_rows.extend([i] * len(banned)), ban_ids.extend(banned)
        if r.bad_words_token_ids:
            banned = banned_token_ids(r.bad_words_token_ids, r.output_token_ids)
            ban_rows.extend([i] * len(banned)), ban_ids.extend(banned)
    meta.max_num_logprobs = max_lp
    if bias_rows:
        meta.logit_bias_rows = _to_device(torch.tensor(bias_rows, dtype=torch.int64), device)
        meta.logit_bias_token_ids = _to_device(torch.tensor(bias_ids, dtype=torch.int64), device)
        meta.logit_bias_values = _to_device(torch.tensor(bias_vals, dtype=torch.float32), device)
    if ban_rows:
        meta.banned_rows = _to_device(torch.tensor(ban_rows, dtype=torch.int64), device)
        meta.banned_token_ids = _to_device(torch.tensor(ban_ids, dtype=torch.int64), device)
    if allowed:
        _add_allowed_token_ids(meta, allowed, device)


def _allowed_ids(request: Request) -> list[int] | None:
    """A row's allowed tokens: its allowed_token_ids, its structured choice's next tokens, or the tokens
    both allow (the choice's alone where they share none); None: any token. A choice's end (EOS) is
    never held back by min_tokens (the caller skips that ban for such rows)."""
    sp = request.sampling_params
    if request.choice is None:
        return sp.allowed_token_ids
    ids = request.choice.allowed(request.output_token_ids)
    if sp.allowed_token_ids is not None:
        both = set(sp.allowed_token_ids)
        ids = [t for t in ids if t in both] or ids
    return ids


def _add_allowed_token_ids(meta: SamplingMetadata, allowed: dict[int, list[int]], device: torch.device) -> None:
    """The allowed_token_ids tensors from {row: its allowed ids} (ids outside the vocabulary: ValueError;
    LLMEngine.add_request has checked them already)."""
    rows = list(allowed)
    meta.allowed_rows = _to_device(torch.tensor(rows, dtype=torch.int64), device)
    meta.allowed_flat_ids = _flat_token_index(rows, list(allowed.values()), meta.vocab_size, device)


def _to_device(host: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Copy a CPU tensor to `device` without waiting for the device: through pinned memory on CUDA (the
    caching host allocator keeps the pinned block alive until the copy is done)."""
    if torch.device(device).type == "cuda":
        return host.contiguous().pin_memory().to(device, non_blocking=True)
    return host.to(device)
