"""Triton helpers shared by the paged attention kernels: gather one tile of K or V through the
block table (converted to the compute dtype, so an fp8 cache never reaches tl.dot), and one
online-softmax step."""
from __future__ import annotations

import triton
import triton.language as tl


@triton.jit
def load_kv_tile(cache_ptr, table_row_ptr, start, seq_len, kv_head_offset,
                 stride_cblock, stride_ctok,
                 HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr,
                 BLOCK_SIZE: tl.constexpr, BLOCK_N: tl.constexpr,
                 TRANSPOSED: tl.constexpr, MASKED: tl.constexpr, SCALAR_TABLE: tl.constexpr,
                 COMPUTE_DTYPE: tl.constexpr):
    """Tokens start..start+BLOCK_N of one KV head: [BLOCK_N, HEAD_PAD], or [HEAD_PAD, BLOCK_N]
    when TRANSPOSED, in COMPUTE_DTYPE (the query's dtype: a no-op unless the cache is fp8, whose
    values, stored with scale 1.0, convert exactly). Positions >= seq_len (and dims >= HEAD_SIZE)
    read as 0 when MASKED or padded. SCALAR_TABLE reads one block id per tile when the tile fits in
    a block (else one per token)."""
    offs_n = start + tl.arange(0, BLOCK_N)
    dims = tl.arange(0, HEAD_PAD)
    if SCALAR_TABLE and BLOCK_N <= BLOCK_SIZE:
        block_id = tl.load(table_row_ptr + start // BLOCK_SIZE).to(tl.int64)
        token_offs = block_id * stride_cblock + (offs_n % BLOCK_SIZE) * stride_ctok
    else:
        in_seq = offs_n < seq_len
        block_ids = tl.load(table_row_ptr + offs_n // BLOCK_SIZE, mask=in_seq, other=0).to(tl.int64)
        token_offs = block_ids * stride_cblock + (offs_n % BLOCK_SIZE) * stride_ctok
    if TRANSPOSED:
        ptrs = cache_ptr + kv_head_offset + token_offs[None, :] + dims[:, None]
        mask = (dims[:, None] < HEAD_SIZE)
        if MASKED:
            mask = mask & (offs_n[None, :] < seq_len)
    else:
        ptrs = cache_ptr + kv_head_offset + token_offs[:, None] + dims[None, :]
        mask = (dims[None, :] < HEAD_SIZE)
        if MASKED:
            mask = mask & (offs_n[:, None] < seq_len)
    if MASKED or HEAD_PAD != HEAD_SIZE:
        tile = tl.load(ptrs, mask=mask, other=0.0)
    else:
        tile = tl.load(ptrs)
    return tile.to(COMPUTE_DTYPE)


@triton.jit
def mma(a, b, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """a @ b with a float32 accumulator. DOT_F32 upcasts first (the CPU interpreter's bf16 dot is
    wrong); PRECISION is "ieee" for float32 inputs (exact), "tf32" otherwise (ignored for 16-bit)."""
    if DOT_F32:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")
    return tl.dot(a, b, input_precision=PRECISION)


@triton.jit
def softmax_step(qk, v, m_i, l_i, acc, DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """One online-softmax update with scores qk [M, N] (base-2 logits, -inf where masked) and
    values v [N, D]. Returns the new running max m_i [M], denominator l_i [M], accumulator [M, D]."""
    m_new = tl.maximum(m_i, tl.max(qk, 1))
    m_safe = tl.where(m_new == float("-inf"), 0.0, m_new)
    p = tl.math.exp2(qk - m_safe[:, None])
    alpha = tl.math.exp2(m_i - m_safe)
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = acc * alpha[:, None] + mma(p.to(v.dtype), v, DOT_F32, PRECISION)
    return m_new, l_i, acc
