"""Triton kernels: one-pass random sampling by the Gumbel race (imported lazily: this imports triton).

A row's token is argmax over v of logits[v] / T + G[v], G[v] = -log(-log(U[v])), which draws v with
probability softmax(logits / T)[v]. The kernel ranks the same scores in base 2, log2(e) * logits[v] / T
- log2(-log2(U[v])) (the base-e score / ln 2 plus a constant), with the GPU's one-instruction log2
(lg2.approx) on CUDA: the two logs per column were most of the kernel's work. U[v] comes from Philox
keyed by the row's 64-bit key: one call (counter c) gives the 4 words of columns v = (c // Q) * TILE + j * Q + c % Q, j = 0..3, Q = TILE / 4,
so a token depends only on (key, logits row), never on the batch or on the chunking.
Each row is split over programs of `chunk_size` columns that write a (best score, column) partial;
a second tiny kernel picks each row's winner. Ties go to the lowest column everywhere.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import libdevice

TILE = 1024                  # columns per loop iteration of a program
MAX_CHUNK = 8192             # columns per program on large batches
MIN_PROGRAMS = 1024          # smaller chunks until the grid has about this many programs
_NUM_WARPS = 4
LOG2E = tl.constexpr(1.4426950408889634)


@triton.jit
def _log2(x, FAST: tl.constexpr):
    """log2(x) float32: lg2.approx on CUDA (FAST), exact where Triton's interpreter runs (no libdevice)."""
    if FAST:
        return libdevice.fast_log2f(x)
    return tl.log2(x)


@triton.jit
def _neg_log2_uniform(random_bits, FAST: tl.constexpr):
    """-log2(U) float32 > 0 (an exponential variate / ln 2) for U = (b + 0.5) / 2^23, b the top 23 of
    the uint32 random_bits: U in [2^-24, 1 - 2^-24], never 0 or 1, so the Gumbel noise is always finite
    and a row with one finite logit always picks it. Accurate relative to its size everywhere: near
    U = 1, where the largest noise (the likely winner's) comes from, lg2.approx's error is absolute
    (~2^-22, i.e. percents of a result of 1e-5), so there it takes the series of -ln(1 - V), V = 1 - U
    exact, to V^5 (relative error < V^5 / 6 <= 2e-7 below V = 1/16)."""
    b = (random_bits >> 9).to(tl.int32).to(tl.float32)
    u = (b + 0.5) * (1.0 / 8388608.0)
    v = (8388607.0 - b + 0.5) * (1.0 / 8388608.0)
    series = v * (1.0 + v * (0.5 + v * (1.0 / 3.0 + v * (0.25 + v * 0.2)))) * LOG2E
    return tl.where(v < 0.0625, series, -_log2(u, FAST))


@triton.jit
def _race_quarter(row_ptr, start, random_bits, best_val, best_idx, vocab_size, inv_temp, noise_on, row_max,
                  log_min_p, QUARTER: tl.constexpr, HAS_TEMP: tl.constexpr, HAS_MIN_P: tl.constexpr,
                  FAST_LOG: tl.constexpr):
    """Columns start..start+QUARTER against the running best (score, column) per lane; random_bits
    [QUARTER] uint32 are those columns' Philox words."""
    cols = start + tl.arange(0, QUARTER)
    x = tl.load(row_ptr + cols, mask=cols < vocab_size, other=float("-inf")).to(tl.float32)
    if HAS_TEMP:
        x = x * inv_temp
    if HAS_MIN_P:
        # probs < min_p * max(probs)  <=>  x - max(x) < log(min_p)
        x = tl.where(x - row_max < log_min_p, float("-inf"), x)
    score = x * LOG2E - noise_on * _log2(_neg_log2_uniform(random_bits, FAST_LOG), FAST_LOG)   # base 2
    better = score > best_val                          # strict: an earlier column keeps a tie
    return tl.where(better, score, best_val), tl.where(better, cols, best_idx)


# Per-row scalars and sizes are not specialized (alignment, == 1, divisible by 16): one variant per
# (dtype, CHUNK, flags) that Sampler.warm_up builds, instead of new ones mid-run.
@triton.jit(do_not_specialize=["temp_stride", "min_p_stride", "vocab_size", "num_chunks"],
            do_not_specialize_on_alignment=["keys_ptr", "temp_ptr", "row_max_ptr", "min_p_ptr", "greedy_ptr"])
def _race_chunks(logits_ptr, stride_row, keys_ptr, temp_ptr, temp_stride, row_max_ptr, min_p_ptr, min_p_stride,
                 greedy_ptr, part_val_ptr, part_idx_ptr, vocab_size, num_chunks,
                 CHUNK: tl.constexpr, TILE: tl.constexpr, HAS_TEMP: tl.constexpr, HAS_MIN_P: tl.constexpr,
                 HAS_GREEDY: tl.constexpr, FAST_LOG: tl.constexpr):
    """Program (row, chunk): best score and its column over columns [chunk * CHUNK, +CHUNK)."""
    row = tl.program_id(0)
    chunk = tl.program_id(1)
    key = tl.load(keys_ptr + row)
    inv_temp = 1.0
    if HAS_TEMP:
        inv_temp = 1.0 / tl.load(temp_ptr + row * temp_stride)
    noise_on = 1.0
    if HAS_GREEDY:
        greedy = tl.load(greedy_ptr + row) != 0
        noise_on = tl.where(greedy, 0.0, 1.0)
        inv_temp = tl.where(greedy, 1.0, inv_temp)
    row_max = 0.0
    log_min_p = float("-inf")
    if HAS_MIN_P:
        row_max = tl.load(row_max_ptr + row) * inv_temp
        min_p = tl.load(min_p_ptr + row * min_p_stride)
        # -inf (keep everything) for rows without min-p, without evaluating log(0)
        log_min_p = tl.where(min_p > 0, tl.log(tl.maximum(min_p, 1.1754944e-38)), float("-inf"))
    row_ptr = logits_ptr + row.to(tl.int64) * stride_row
    QUARTER: tl.constexpr = TILE // 4
    best_val = tl.full((QUARTER,), float("-inf"), tl.float32)
    best_idx = tl.zeros((QUARTER,), tl.int32)
    for start in range(chunk * CHUNK, chunk * CHUNK + CHUNK, TILE):
        # One Philox call gives 4 words: word j is for column start + j * QUARTER + lane (counter
        # start / 4 + lane), so the noise of a column depends on the column alone.
        r0, r1, r2, r3 = tl.randint4x(key, start // 4 + tl.arange(0, QUARTER))
        best_val, best_idx = _race_quarter(row_ptr, start, r0, best_val, best_idx, vocab_size, inv_temp,
                                           noise_on, row_max, log_min_p, QUARTER, HAS_TEMP, HAS_MIN_P,
                                           FAST_LOG)
        best_val, best_idx = _race_quarter(row_ptr, start + QUARTER, r1, best_val, best_idx, vocab_size,
                                           inv_temp, noise_on, row_max, log_min_p, QUARTER, HAS_TEMP, HAS_MIN_P,
                                           FAST_LOG)
        best_val, best_idx = _race_quarter(row_ptr, start + 2 * QUARTER, r2, best_val, best_idx, vocab_size,
                                           inv_temp, noise_on, row_max, log_min_p, QUARTER, HAS_TEMP, HAS_MIN_P,
                                           FAST_LOG)
        best_val, best_idx = _race_quarter(row_ptr, start + 3 * QUARTER, r3, best_val, best_idx, vocab_size,
                                           inv_temp, noise_on, row_max, log_min_p, QUARTER, HAS_TEMP, HAS_MIN_P,
                                           FAST_LOG)
    top = tl.max(best_val, axis=0)
    top_idx = tl.min(tl.where(best_val == top, best_idx, 2147483647), axis=0)
    tl.store(part_val_ptr + row * num_chunks + chunk, top)
    tl.store(part_idx_ptr + row * num_chunks + chunk, top_idx)


@triton.jit(do_not_specialize=["num_chunks"])
def _pick_rows(part_val_ptr, part_idx_ptr, out_ptr, num_chunks, CHUNKS_PAD: tl.constexpr):
    """Program row: the column of the row's best partial (the first chunk on ties) -> out[row] int64."""
    row = tl.program_id(0)
    chunks = tl.arange(0, CHUNKS_PAD)
    vals = tl.load(part_val_ptr + row * num_chunks + chunks, mask=chunks < num_chunks, other=float("-inf"))
    best = tl.argmax(vals, axis=0, tie_break_left=True)
    tl.store(out_ptr + row, tl.load(part_idx_ptr + row * num_chunks + best).to(tl.int64))


def chunk_size_for(num_rows: int, vocab_size: int) -> int:
    """Columns per program: MAX_CHUNK, halved (down to TILE) while the grid is under MIN_PROGRAMS."""
    chunk = min(MAX_CHUNK, max(TILE, triton.next_power_of_2(vocab_size)))
    while chunk > TILE and num_rows * triton.cdiv(vocab_size, chunk) < MIN_PROGRAMS:
        chunk //= 2
    return chunk


def gumbel_sample(logits: torch.Tensor, keys: torch.Tensor, temperature: torch.Tensor | None = None,
                  min_p: torch.Tensor | None = None, greedy: torch.Tensor | None = None,
                  chunk_size: int | None = None, fast_log: bool | None = None) -> torch.Tensor:
    """One token per row, drawn from softmax(logits / temperature) restricted by min_p.

    logits `[N, V]` float32/bfloat16/float16, last dim contiguous (-inf = masked token);
    keys `[N] int64`: the row's Philox key; temperature `[N] float32` > 0 (any stride) (None: logits already scaled);
    min_p `[N] float32` in [0, 1], any stride (None: off): drop tokens whose prob < min_p * the row's top prob;
    greedy `[N] bool` (None: none): those rows take the exact argmax of the logits (temperature ignored);
    chunk_size: columns per program, a multiple of TILE (None: chunk_size_for); fast_log: lg2.approx for
    the two logs per column (None: on CUDA; False: exact log2, what the interpreter runs). Returns `[N] int64`.
    No host sync; safe to call on a side stream or under CUDA-graph capture.
    """
    num_rows, vocab_size = logits.shape
    if logits.stride(1) != 1:
        logits = logits.contiguous()
    chunk = chunk_size or chunk_size_for(num_rows, vocab_size)
    if chunk % TILE:
        raise ValueError(f"chunk_size must be a positive multiple of {TILE}, got {chunk}")
    num_chunks = triton.cdiv(vocab_size, chunk)
    dev = logits.device
    part_val = torch.empty(num_rows, num_chunks, dtype=torch.float32, device=dev)
    part_idx = torch.empty(num_rows, num_chunks, dtype=torch.int32, device=dev)
    row_max = logits.amax(dim=-1).float() if min_p is not None else None
    keys = keys.contiguous()
    greedy = None if greedy is None else greedy.contiguous()
    dummy = keys
    _race_chunks[(num_rows, num_chunks)](
        logits, logits.stride(0), keys, _or(temperature, dummy), _stride(temperature), _or(row_max, dummy),
        _or(min_p, dummy), _stride(min_p), _or(greedy, dummy), part_val, part_idx, vocab_size, num_chunks,
        CHUNK=chunk, TILE=TILE, HAS_TEMP=temperature is not None, HAS_MIN_P=min_p is not None,
        HAS_GREEDY=greedy is not None, FAST_LOG=logits.is_cuda if fast_log is None else fast_log, num_warps=_NUM_WARPS)
    out = torch.empty(num_rows, dtype=torch.int64, device=dev)
    _pick_rows[(num_rows,)](part_val, part_idx, out, num_chunks,
                            CHUNKS_PAD=triton.next_power_of_2(num_chunks), num_warps=1)
    return out


def _stride(vector: torch.Tensor | None) -> int:
    return 0 if vector is None else vector.stride(0)


def _or(tensor: torch.Tensor | None, dummy: torch.Tensor) -> torch.Tensor:
    return dummy if tensor is None else tensor
