"""Triton kernel: paged causal attention for batches that mix decodes, fresh prefills and chunked
prefills over cached context (prior tokens are read through the block table)."""
from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from attention.ops.paged_tiles import load_kv_tile, mma, softmax_step

# Tile shapes per device kind; `python -m engine.bench attention --sweep` re-tunes them. BLOCK_M
# counts query rows, i.e. (tokens x heads of one KV group); BLOCK_N counts keys per step.
# H100, bf16, D=128, 2026-11-25: 128/32/8 warps/2 stages beat 128/64/8/3 by 18% at 16x1024 and
# was within 1.5% of the best (128/128/8/2) at 4x4096; 3+ stages with BLOCK_N=32 were 50% slower.
# SCALAR_TABLE (one block id per tile) made prefill 48% slower at block sizes 64 and 256: off.
PREFILL_CONFIGS = {
    "cuda": dict(BLOCK_M=128, BLOCK_N=32, num_warps=8, num_stages=2, SCALAR_TABLE=False),
    "cpu": dict(BLOCK_M=32, BLOCK_N=32, num_warps=4, num_stages=1, SCALAR_TABLE=True),
}


# One variant for any batch: the tile count would otherwise build new specializations mid-run (H100:
# 3). The block table's row stride is kept a multiple of 16 instead (attention.backend.block_table_cols):
# not specializing on it made this kernel slower (2026-11-26: prefill steps 184.7 -> 193.3 ms, Qwen3-8B).
@triton.jit(do_not_specialize=["num_tiles"])
def _prefill_kernel(q_ptr, cache_ptr, out_ptr, query_start_ptr, seq_lens_ptr, table_ptr,
                    scale_log2, num_tiles,
                    stride_qt, stride_qh, stride_ot, stride_oh,
                    value_offset, stride_cblock, stride_ctok, stride_chead, stride_table,
                    GROUP: tl.constexpr, GROUP_PAD: tl.constexpr,
                    HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SCALAR_TABLE: tl.constexpr,
                    DOT_F32: tl.constexpr, PRECISION: tl.constexpr):
    """Program (tile, request, kv_head): BLOCK_M // GROUP_PAD query tokens x the GROUP query heads
    that share kv_head, attending over keys 0..(own position). Heaviest (last) tiles run first."""
    BLOCK_Q: tl.constexpr = BLOCK_M // GROUP_PAD
    tile = num_tiles - 1 - tl.program_id(0)
    req = tl.program_id(1)
    kv_head = tl.program_id(2)
    q_start = tl.load(query_start_ptr + req)
    q_len = tl.load(query_start_ptr + req + 1) - q_start
    if tile * BLOCK_Q >= q_len:
        return
    seq_len = tl.load(seq_lens_ptr + req)
    ctx_len = seq_len - q_len

    rows = tl.arange(0, BLOCK_M)
    tok = tile * BLOCK_Q + rows // GROUP_PAD
    head = kv_head * GROUP + rows % GROUP_PAD
    row_ok = (tok < q_len) & (rows % GROUP_PAD < GROUP)
    dims = tl.arange(0, HEAD_PAD)
    q_rows = (q_start + tok).to(tl.int64)
    q = tl.load(q_ptr + q_rows[:, None] * stride_qt + head[:, None] * stride_qh + dims[None, :],
                mask=row_ok[:, None] & (dims[None, :] < HEAD_SIZE), other=0.0)
    q_pos = ctx_len + tok

    m_i = tl.full([BLOCK_M], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)
    acc = tl.zeros([BLOCK_M, HEAD_PAD], tl.float32)
    table_row = table_ptr + req.to(tl.int64) * stride_table
    head_off = kv_head.to(tl.int64) * stride_chead
    first_pos = ctx_len + tile * BLOCK_Q
    last_pos = tl.minimum(first_pos + BLOCK_Q, seq_len)  # one past the last key any row sees
    full_end = ((first_pos + 1) // BLOCK_N) * BLOCK_N     # keys below: visible to every row

    for start in range(0, full_end, BLOCK_N):
        k = load_kv_tile(cache_ptr, table_row, start, seq_len, head_off, stride_cblock, stride_ctok,
                         HEAD_SIZE, HEAD_PAD, BLOCK_SIZE, BLOCK_N, True, False, SCALAR_TABLE, q.dtype)
        qk = mma(q, k, DOT_F32, PRECISION) * scale_log2
        v = load_kv_tile(cache_ptr + value_offset, table_row, start, seq_len, head_off, stride_cblock,
                         stride_ctok, HEAD_SIZE, HEAD_PAD, BLOCK_SIZE, BLOCK_N, False, False, SCALAR_TABLE,
                         q.dtype)
        m_i, l_i, acc = softmax_step(qk, v, m_i, l_i, acc, DOT_F32, PRECISION)

    for start in range(full_end, last_pos, BLOCK_N):
        k = load_kv_tile(cache_ptr, table_row, start, seq_len, head_off, stride_cblock, stride_ctok,
                         HEAD_SIZE, HEAD_PAD, BLOCK_SIZE, BLOCK_N, True, True, SCALAR_TABLE, q.dtype)
        qk = mma(q, k, DOT_F32, PRECISION) * scale_log2
        k_pos = start + tl.arange(0, BLOCK_N)
        qk = tl.where(k_pos[None, :] <= q_pos[:, None], qk, float("-inf"))
        v = load_kv_tile(cache_ptr + value_offset, table_row, start, seq_len, head_off, stride_cblock,
                         stride_ctok, HEAD_SIZE, HEAD_PAD, BLOCK_SIZE, BLOCK_N, False, True, SCALAR_TABLE,
                         q.dtype)
        m_i, l_i, acc = softmax_step(qk, v, m_i, l_i, acc, DOT_F32, PRECISION)

    l_i = tl.where(l_i == 0.0, 1.0, l_i)
    out = acc / l_i[:, None]
    tl.store(out_ptr + q_rows[:, None] * stride_ot + head[:, None] * stride_oh + dims[None, :],
             out.to(out_ptr.dtype.element_ty), mask=row_ok[:, None] & (dims[None, :] < HEAD_SIZE))


def prefill_attention(query: torch.Tensor, kv_cache: torch.Tensor, output: torch.Tensor,
                      query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
                      scale: float, num_reqs: int, max_query_len: int, config: dict | None = None) -> None:
    """Causal paged attention for a mixed batch; writes output [T, H, D] in place.

    query [T, H, D]; kv_cache [2, num_blocks, block_size, Hkv, D]; query_start_loc [num_reqs+1]
    int32; seq_lens [num_reqs] int32 (cached + new tokens); block_table [num_reqs, max_blocks] int32.
    Query token i of request r sits at position seq_len - query_len + i. `num_reqs` and
    `max_query_len` are host ints (they size the grid); nothing here syncs with the device.
    """
    num_heads, head_size = query.shape[1], query.shape[2]
    num_kv_heads, block_size = kv_cache.shape[3], kv_cache.shape[2]
    group = num_heads // num_kv_heads
    group_pad = triton.next_power_of_2(group)
    cfg = dict(config or PREFILL_CONFIGS["cpu" if query.device.type == "cpu" else "cuda"])
    block_m = max(cfg.pop("BLOCK_M"), group_pad)
    num_tiles = triton.cdiv(max_query_len, block_m // group_pad)
    if num_reqs == 0 or num_tiles == 0:
        return
    _prefill_kernel[(num_tiles, num_reqs, num_kv_heads)](
        query, kv_cache, output, query_start_loc, seq_lens, block_table,
        scale * math.log2(math.e), num_tiles,
        query.stride(0), query.stride(1), output.stride(0), output.stride(1),
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_table.stride(0),
        GROUP=group, GROUP_PAD=group_pad, HEAD_SIZE=head_size,
        HEAD_PAD=max(16, triton.next_power_of_2(head_size)), BLOCK_SIZE=block_size, BLOCK_M=block_m,
        DOT_F32=query.device.type == "cpu",
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32", **cfg)
