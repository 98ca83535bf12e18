"""Sampler: logits -> one token per row, batched on the device with no host sync.

Order, as vLLM V1's: logprobs first, vLLM's default "raw_logprobs" (log_softmax of the model's logits,
before anything changes them); then the allowed_token_ids mask, logit bias, banned tokens (min_tokens,
bad_words), penalties (engine/penalties.py). Greedy rows take the argmax. Random rows: divide by
temperature, min-p (on the scaled logits, so top-p works on the distribution renormalised after it),
top-k, top-p, then the exponential race: argmax(probs / E) with E ~ Exponential(1) i.i.d. per token,
which draws a token with probability proportional to probs. Rows with a seed draw E from their own
generator, reseeded every step from (seed, step), so their tokens do not depend on the rest of the batch
or on preemption.

On CUDA (with triton) random rows instead go through one Triton kernel (engine/sampling_kernel.py): the
Gumbel race argmax(logits / T + G) over the filtered logits, with greedy rows folded in (and min-p where
the batch has no top-k / top-p: then nothing follows it, so the kernel's min-p is vLLM's), noise
from in-kernel Philox keyed per row: seed_for_step(seed, step) for seeded rows, a fresh draw from the
default torch generator (on the device) for the others. ENGINE_SAMPLING_KERNEL=0 keeps the torch path.
"""
from __future__ import annotations

import functools
import importlib
import itertools
import importlib.util
import os
from dataclasses import dataclass
from types import ModuleType

import torch

from engine.penalties import apply_logit_processors
from engine.sampling_metadata import SamplingMetadata

_MASK64 = (1 << 64) - 1
HAS_TRITON = importlib.util.find_spec("triton") is not None
KERNEL_ENABLED = os.environ.get("ENGINE_SAMPLING_KERNEL", "1") != "0"


@dataclass
class SamplerOutput:
    """sampled_token_ids `[N] int64` on the logits' device. When some row asked for logprobs
    (K = max_num_logprobs): logprob_token_ids `[N, K+1] int64` (the sampled token first, then the top-K
    tokens) and logprobs `[N, K+1] float32`: log-softmax of the raw logits (vLLM's "raw_logprobs": before
    the allowed_token_ids mask, bias, banned tokens, penalties, temperature and filters), and
    logprob_ranks `[N] int64`: the sampled token's rank in the vocabulary by those logprobs (vLLM's:
    the number of tokens with one at least as large). A row that asked for k < K uses the first k+1 columns."""

    sampled_token_ids: torch.Tensor
    logprob_token_ids: torch.Tensor | None = None
    logprobs: torch.Tensor | None = None
    logprob_ranks: torch.Tensor | None = None


def seed_for_step(seed: int, step: int) -> int:
    """A 63-bit generator seed from (request seed, output step): splitmix64, stable across processes."""
    z = (seed * 0x9E3779B97F4A7C15 + step + 1) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return (z ^ (z >> 31)) & ((1 << 63) - 1)


class Sampler:
    """Stateless except for one reusable torch.Generator per device for seeded rows.

    use_kernel: True = random rows always go through the Triton kernel (tests run it on CPU under
    TRITON_INTERPRET=1), False = always torch, None = the kernel on CUDA when triton is installed and
    ENGINE_SAMPLING_KERNEL is not "0".
    """

    def __init__(self, use_kernel: bool | None = None) -> None:
        self._generators: dict[torch.device, torch.Generator] = {}
        self.use_kernel = use_kernel

    def _kernel_for(self, logits: torch.Tensor) -> bool:
        if self.use_kernel is not None:
            return self.use_kernel
        return logits.is_cuda and HAS_TRITON and KERNEL_ENABLED

    def __call__(self, logits: torch.Tensor, meta: SamplingMetadata) -> SamplerOutput:
        """logits `[N, V]` float32 or the model's 16-bit dtype (not modified) -> SamplerOutput.

        16-bit logits go as they are to the argmax of all-greedy batches and to the Triton kernel
        (which upcasts as it loads); every other path works on a float32 copy."""
        if logits.dim() != 2 or logits.shape[0] != meta.num_reqs:
            raise ValueError(f"logits must be [num_reqs={meta.num_reqs}, V], got {tuple(logits.shape)}")
        if logits.dtype != torch.float32 and not self._reads_16bit(logits, meta):
            logits = logits.float()
        logprobs = None
        if meta.max_num_logprobs is not None:                     # raw: before every processor
            logprobs = torch.log_softmax(logits, dim=-1, dtype=torch.float32)
        logits = apply_logit_processors(logits, meta)
        if meta.all_greedy:
            sampled = logits.argmax(dim=-1)
        elif self._kernel_for(logits):
            sampled = self._sample_kernel(logits, meta)          # greedy rows included
        else:
            sampled = self._sample_random(logits, meta)
            if meta.greedy_mask is not None:
                sampled = torch.where(meta.greedy_mask, logits.argmax(dim=-1), sampled)
        out = SamplerOutput(sampled_token_ids=sampled)
        if logprobs is not None:
            out.logprob_token_ids, out.logprobs, out.logprob_ranks = gather_logprobs(logprobs, sampled,
                                                                                     meta.max_num_logprobs)
        return out

    def _reads_16bit(self, logits: torch.Tensor, meta: SamplingMetadata) -> bool:
        """Whether this batch needs no float32 copy of the logits: nothing but an argmax or the kernel
        reads them (bias, min_tokens, penalties, logprobs, top-k/top-p and the torch race all do)."""
        if not meta.no_logit_processors or meta.max_num_logprobs is not None:
            return False
        return meta.all_greedy or (meta.no_top_k_top_p and self._kernel_for(logits))

    def warm_up(self, max_num_rows: int, vocab_size: int, device: torch.device,
                dtypes: tuple[torch.dtype, ...] = (torch.float32,)) -> list[int]:
        """Compile the sampling kernel for each chunk size that batches of 1..max_num_rows rows use,
        plain and with greedy rows mixed in, for logits of each of `dtypes` (the model dtype, and
        float32 after penalties or top-k/top-p), so no request pays a compile mid-flight (on a fresh
        H100 machine these compiles take a few seconds; later processes load them from Triton's
        cache). Returns the chunk sizes (none when the kernel is not used)."""
        if not self._kernel_for(torch.empty(0, device=device)):
            return []
        kernel = _kernel()
        rows_of_chunk: dict[int, int] = {}
        for num_rows in range(1, max_num_rows + 1):
            rows_of_chunk.setdefault(kernel.chunk_size_for(num_rows, vocab_size), num_rows)
        for num_rows, dtype in itertools.product(rows_of_chunk.values(), dict.fromkeys(dtypes)):
            logits = torch.zeros(num_rows, vocab_size, device=device, dtype=dtype)
            keys = torch.zeros(num_rows, dtype=torch.int64, device=device)
            temperature = torch.ones(num_rows, device=device)
            kernel.gumbel_sample(logits, keys, temperature)
            kernel.gumbel_sample(logits, keys, temperature, greedy=torch.zeros(num_rows, dtype=torch.bool,
                                                                                device=device))
        return sorted(rows_of_chunk)

    def _sample_random(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """Temperature, min-p, top-k, top-p, then the exponential race. Returns `[N] int64`."""
        logits = logits / meta.temperature.unsqueeze(1)
        if meta.min_p is not None:
            apply_min_p_(logits, meta.min_p)
        if not meta.no_top_k_top_p:
            logits = _top_k_top_p(logits, meta)
        probs = logits.softmax(dim=-1)
        noise = torch.empty_like(probs).exponential_()
        if meta.seeds:
            gen = self._generator(probs.device)
            for row, seed, step in meta.seeds:
                gen.manual_seed(seed_for_step(seed, step))
                noise[row].exponential_(generator=gen)
        noise.clamp_min_(torch.finfo(noise.dtype).tiny)
        return probs.div_(noise).argmax(dim=-1)

    def _sample_kernel(self, logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
        """One Gumbel-race kernel (temperature, greedy rows and, without top-k / top-p, min-p inside);
        where the batch has top-k / top-p: temperature, min-p, top-k, top-p in torch first (vLLM's order),
        and the kernel gets min_p None. Returns `[N] int64`."""
        temperature, min_p = meta.temperature, meta.min_p
        if not meta.no_top_k_top_p:
            logits = logits / temperature.unsqueeze(1)
            temperature = None
            if min_p is not None:
                apply_min_p_(logits, min_p)
                min_p = None
            logits = _top_k_top_p(logits, meta)
        return _kernel().gumbel_sample(logits, row_keys(meta, logits.device), temperature, min_p,
                                       meta.greedy_mask)

    def _generator(self, device: torch.device) -> torch.Generator:
        gen = self._generators.get(device)
        if gen is None:
            gen = self._generators[device] = torch.Generator(device=device)
        return gen


def row_keys(meta: SamplingMetadata, device: torch.device) -> torch.Tensor:
    """Philox keys `[N] int64` for the kernel: seed_for_step(seed, step) on seeded rows, a fresh 62-bit
    draw from the default torch generator (made on the device, no host sync) on the others."""
    keys = torch.randint(1 << 62, (meta.num_reqs,), dtype=torch.int64, device=device)
    if meta.seeds:
        host = torch.tensor([[row for row, _, _ in meta.seeds],
                             [seed_for_step(seed, step) for _, seed, step in meta.seeds]], dtype=torch.int64)
        if keys.is_cuda:
            host = host.pin_memory()
        host = host.to(device, non_blocking=True)
        keys.index_copy_(0, host[0], host[1])
    return keys


@functools.cache
def _kernel() -> ModuleType:
    """engine.sampling_kernel, imported on first use (this imports triton)."""
    return importlib.import_module("engine.sampling_kernel")


def apply_top_k_top_p(logits: torch.Tensor, top_k: torch.Tensor | None, max_top_k: int,
                      top_p: torch.Tensor | None) -> torch.Tensor:
    """Set to -inf every logit outside the row's top-k and outside its top-p nucleus.

    logits `[N, V] float32`; top_k `[N] int64` in [1, V] (V = off; max_top_k = the largest other) or None; top_p `[N] float32` in (0, 1]
    or None. The nucleus is the smallest set of highest-probability tokens whose mass reaches top_p (the
    top token is always kept). Ties at the top-k threshold are all kept.
    """
    if top_p is None:
        off = top_k.unsqueeze(1) >= logits.shape[1]
        kth = logits.topk(max_top_k, dim=-1).values.gather(1, (top_k.clamp(max=max_top_k) - 1).unsqueeze(1))
        return logits.masked_fill((logits < kth) & ~off, float("-inf"))
    sorted_logits, order = logits.sort(dim=-1)                       # ascending
    if top_k is not None:
        kth = sorted_logits.gather(1, (logits.shape[1] - top_k).unsqueeze(1))
        sorted_logits.masked_fill_(sorted_logits < kth, float("-inf"))
    mass_below = sorted_logits.softmax(dim=-1).cumsum(dim=-1)          # mass up to and including each
    drop = mass_below <= (1 - top_p).unsqueeze(1)
    drop[:, -1] = False
    sorted_logits.masked_fill_(drop, float("-inf"))
    return torch.empty_like(logits).scatter_(1, order, sorted_logits)


def apply_top_p_within_top_k(logits: torch.Tensor, top_k: torch.Tensor, max_top_k: int,
                             top_p: torch.Tensor) -> torch.Tensor:
    """Same result as apply_top_k_top_p when every row has a top_k, without sorting the vocabulary:
    top-p runs on the `[N, max_top_k]` candidates that torch.topk returns (highest first)."""
    values, ids = logits.topk(max_top_k, dim=-1)
    rank = torch.arange(max_top_k, device=logits.device)
    values.masked_fill_(rank >= top_k.unsqueeze(1), float("-inf"))
    probs = values.softmax(dim=-1)
    mass_above = probs.cumsum(dim=-1) - probs                        # mass of the better candidates
    values.masked_fill_(mass_above >= top_p.unsqueeze(1), float("-inf"))
    return torch.full_like(logits, float("-inf")).scatter_(1, ids, values)


def _top_k_top_p(logits: torch.Tensor, meta: SamplingMetadata) -> torch.Tensor:
    """The batch's top-k / top-p on temperature-scaled logits `[N, V] float32` (new tensor)."""
    if meta.top_p is not None and meta.top_k_all_rows:
        return apply_top_p_within_top_k(logits, meta.top_k, meta.max_top_k, meta.top_p)
    return apply_top_k_top_p(logits, meta.top_k, meta.max_top_k, meta.top_p)


def apply_min_p_(logits: torch.Tensor, min_p: torch.Tensor) -> None:
    """In place, on temperature-scaled logits `[N, V] float32`: -inf where the token's prob is below
    min_p `[N]` (0: off) times the row's largest prob, i.e. where logit < row max + log(min_p) (vLLM V1's
    MinPLogitsProcessor, run after temperature and before top-k / top-p). The row's max always stays."""
    threshold = logits.amax(dim=-1, keepdim=True) + min_p.log().unsqueeze(1)     # log(0) = -inf: keep all
    logits.masked_fill_(logits < threshold, float("-inf"))


def gather_logprobs(logprobs: torch.Tensor, scored: torch.Tensor,
                    k: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """logprobs `[N, V]` float32, scored `[N]` int64 (the sampled or prompt token of each row) ->
    (token ids `[N, k+1] int64`, logprobs `[N, k+1] float32`, ranks `[N] int64`): the scored token first,
    then the k most likely tokens (highest first; k is capped at V), and the scored token's rank in the
    row as vLLM counts it: the number of tokens whose logprob is at least as large (the top token's is 1
    where it has no tie; the top k are ranked 1..k by position). On the logprobs' device, no host sync."""
    k = min(k, logprobs.shape[1])
    ids = scored.unsqueeze(1)
    if k > 0:
        ids = torch.cat([ids, logprobs.topk(k, dim=-1).indices], dim=1)
    values = logprobs.gather(1, ids)
    ranks = (logprobs >= values[:, :1]).sum(dim=-1)
    return ids, values, ranks
