"""Triton kernels: paged decode attention (one query token per request) with split-KV.

Each (request, KV head) is cut into `num_splits` chunks of its context; one program per chunk
attends with all query heads of the KV group at once (each K/V tile is loaded once per group), and
a reduction kernel merges the chunks by their log-sum-exp. With one split the first kernel writes
the output directly.
"""
from __future__ import annotations

import math
import os

import torch
import triton
import triton.language as tl

from attention.ops.paged_tiles import load_kv_tile, mma, softmax_step
from attention.ops.store_kv import slot_offset
from attention.qk_rope import QKRope
from models.layers.ops.pdl import pdl_kwargs
from models.layers.ops.qk_norm_rope import check_cos_sin_cache, norm_rope, rope_cos_sin, rope_partner

# H100, bf16, D=128, 2026-11-25: BLOCK_N=64 with 4 warps is within 1% of the best everywhere but
# batch 1 x 16k (128 is 3% faster there, 10% slower at 32 x 16k); stages 2-4 differ by < 1%.
# SCALAR_TABLE (one block id per tile when BLOCK_N <= block_size) is 1-2% faster at blocks 64, 256.
# 2026-11-26 (engine/bench/decode_cost.py): as the engine calls it (storing the step's K/V, q/k norm
# + rope: "cuda"), 2 stages beat 3 on every case (128 x 610 124.2 -> 116.6 us, 32 x 4k 246.3 -> 212.2);
# the plain kernel ("cuda_plain", no K/V to store) keeps 3 (2 are 0-6% slower there). HEADS_FIRST is
# within 0.5%. ENGINE_TRITON_DECODE_STAGES overrides the engine case's stages (an A/B knob).
_CUDA_PLAIN = dict(BLOCK_N=64, num_warps=4, num_stages=3, SCALAR_TABLE=True, HEADS_FIRST=False)
DECODE_CONFIGS = {
    "cuda": dict(_CUDA_PLAIN, num_stages=int(os.environ.get("ENGINE_TRITON_DECODE_STAGES", "2"))),
    "cuda_plain": _CUDA_PLAIN,
    "cpu": dict(_CUDA_PLAIN, BLOCK_N=32, num_stages=1),
}


@triton.jit
def _store_new_kv(key_ptr, value_ptr, slot_ptr, cache_ptr, q_row, kv_head, stride_kt, stride_kh, stride_vt,
                  stride_vh, value_offset, stride_cblock, stride_ctok, stride_chead, dims, dim_ok,
                  k_norm_ptr, cos, sin, eps, BLOCK_SIZE: tl.constexpr, HEAD_SIZE: tl.constexpr,
                  ROPE: tl.constexpr, ROTARY_DIM: tl.constexpr, HAS_NORM: tl.constexpr):
    """Write this request's new K/V of `kv_head` (token row q_row) to its slot, if it has one; with
    ROPE the key is normalized (k_norm) and rotated first."""
    slot = tl.load(slot_ptr + q_row)
    if slot >= 0:
        dst = cache_ptr + slot_offset(slot, BLOCK_SIZE, stride_cblock, stride_ctok) + kv_head * stride_chead + dims
        key_row = key_ptr + q_row * stride_kt + kv_head * stride_kh
        k = tl.load(key_row + dims[None, :], mask=dim_ok[None, :], other=0.0)   # [1, HEAD_PAD]
        if ROPE:
            partner = rope_partner(dims, ROTARY_DIM)
            k_partner = tl.load(key_row + partner[None, :], mask=dim_ok[None, :], other=0.0)
            k = norm_rope(k.to(tl.float32), k_partner.to(tl.float32), k_norm_ptr, dims, partner, cos, sin, eps,
                          HEAD_SIZE, ROTARY_DIM, HAS_NORM, key_ptr.dtype.element_ty)
        v = tl.load(value_ptr + q_row * stride_vt + kv_head * stride_vh + dims, mask=dim_ok)
        tl.store(dst[None, :], k.to(cache_ptr.dtype.element_ty), mask=dim_ok[None, :])
        tl.store(dst + value_offset, v.to(cache_ptr.dtype.element_ty), mask=dim_ok)


@triton.jit
def _decode_kernel(q_ptr, cache_ptr, out_ptr, part_out_ptr, part_lse_ptr,
                   query_start_ptr, seq_lens_ptr, table_ptr, scale_log2, num_splits,
                   stride_qt, stride_qh, stride_ot, stride_oh,
                   stride_pr, stride_ph, stride_ps, stride_lr, stride_lh,
                   value_offset, stride_cblock, stride_ctok, stride_chead, stride_table,
                   key_ptr, value_ptr, slot_ptr, stride_kt, stride_kh, stride_vt, stride_vh,
                   positions_ptr, rope_cache_ptr, stride_rope, q_norm_ptr, k_norm_ptr, norm_eps,
                   ROPE: tl.constexpr, ROTARY_DIM: tl.constexpr, HAS_NORM: tl.constexpr,
                   DIRECT: tl.constexpr, GROUP: tl.constexpr, BLOCK_H: tl.constexpr,
                   HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, BLOCK_SIZE: tl.constexpr,
                   BLOCK_N: tl.constexpr, SCALAR_TABLE: tl.constexpr, DOT_F32: tl.constexpr,
                   PRECISION: tl.constexpr, USE_PDL: tl.constexpr, STORE_KV: tl.constexpr,
                   HEADS_FIRST: tl.constexpr):
    """Program (request, kv_head, split): the GROUP query heads of kv_head over one context chunk.
    With STORE_KV the program whose chunk holds the request's last token first writes that token's
    K/V (key/value at slot_mapping) into the cache: the step's K/V store needs no launch of its own.
    With ROPE (needs STORE_KV) q and k arrive before their per-head RMSNorm (HAS_NORM) and neox rope
    at positions[q_row], which the program applies: every program to its q heads, the storing one
    to the key it stores. HEADS_FIRST: the grid is (kv_head, request, split) instead of (request,
    kv_head, split), so the programs of one request's KV heads are launched next to each other."""
    if USE_PDL:  # see models/layers/ops/pdl.py
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    req = tl.program_id(1 if HEADS_FIRST else 0)
    kv_head = tl.program_id(0 if HEADS_FIRST else 1)
    split = tl.program_id(2)
    seq_len = tl.load(seq_lens_ptr + req)
    num_tiles = tl.cdiv(seq_len, BLOCK_N)
    tiles_per_split = tl.cdiv(num_tiles, num_splits)
    tile_begin = split * tiles_per_split
    tile_end = tl.minimum(tile_begin + tiles_per_split, num_tiles)

    rows = tl.arange(0, BLOCK_H)
    head = kv_head * GROUP + rows
    row_ok = rows < GROUP
    if not DIRECT and tile_begin >= tile_end:
        # A split past the context (the graph's split count assumes max_model_len): only its
        # log-sum-exp, -inf, for the merge, which then never reads its partial output.
        lse_offs = req.to(tl.int64) * stride_lr + head * stride_lh + split
        tl.store(part_lse_ptr + lse_offs, tl.full([BLOCK_H], float("-inf"), tl.float32), mask=row_ok)
        return
    dims = tl.arange(0, HEAD_PAD)
    dim_ok = dims < HEAD_SIZE
    q_row = tl.load(query_start_ptr + req).to(tl.int64)
    q_rows = q_ptr + q_row * stride_qt + head[:, None] * stride_qh
    q = tl.load(q_rows + dims[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
    cos = tl.zeros([HEAD_PAD], tl.float32)   # rope's cos and sin (unused without ROPE)
    sin = tl.zeros([HEAD_PAD], tl.float32)
    if ROPE:
        partner = rope_partner(dims, ROTARY_DIM)
        cos, sin = rope_cos_sin(rope_cache_ptr, tl.load(positions_ptr + q_row), stride_rope, dims, ROTARY_DIM)
        q_partner = tl.load(q_rows + partner[None, :], mask=row_ok[:, None] & dim_ok[None, :], other=0.0)
        q = norm_rope(q.to(tl.float32), q_partner.to(tl.float32), q_norm_ptr, dims, partner, cos, sin, norm_eps,
                      HEAD_SIZE, ROTARY_DIM, HAS_NORM, q_ptr.dtype.element_ty)
    if STORE_KV:
        last_tile = (seq_len - 1) // BLOCK_N
        if (seq_len > 0) & (tile_begin <= last_tile) & (last_tile < tile_end):
            _store_new_kv(key_ptr, value_ptr, slot_ptr, cache_ptr, q_row, kv_head.to(tl.int64), stride_kt,
                          stride_kh, stride_vt, stride_vh, value_offset, stride_cblock, stride_ctok,
                          stride_chead, dims, dim_ok, k_norm_ptr, cos, sin, norm_eps, BLOCK_SIZE, HEAD_SIZE,
                          ROPE, ROTARY_DIM, HAS_NORM)
        tl.debug_barrier()  # the CTA's loads below see the stored token

    m_i = tl.full([BLOCK_H], float("-inf"), tl.float32)
    l_i = tl.zeros([BLOCK_H], tl.float32)
    acc = tl.zeros([BLOCK_H, HEAD_PAD], tl.float32)
    table_row = table_ptr + req.to(tl.int64) * stride_table
    head_off = kv_head.to(tl.int64) * stride_chead
    for tile in range(tile_begin, tile_end):
        start = tile * BLOCK_N
        k = load_kv_tile(cache_ptr, table_row, start, seq_len, head_off, stride_cblock, stride_ctok,
                         HEAD_SIZE, HEAD_PAD, BLOCK_SIZE, BLOCK_N, True, True, SCALAR_TABLE, q.dtype)
        qk = mma(q, k, DOT_F32, PRECISION) * scale_log2
        k_pos = start + tl.arange(0, BLOCK_N)
        qk = tl.where(k_pos[None, :] < seq_len, qk, float("-inf"))
        v = load_kv_tile(cache_ptr + value_offset, table_row, start, seq_len, head_off, stride_cblock,
                         stride_ctok, HEAD_SIZE, HEAD_PAD, BLOCK_SIZE, BLOCK_N, False, True, SCALAR_TABLE,
                         q.dtype)
        m_i, l_i, acc = softmax_step(qk, v, m_i, l_i, acc, DOT_F32, PRECISION)

    out = acc / tl.where(l_i == 0.0, 1.0, l_i)[:, None]
    mask = row_ok[:, None] & dim_ok[None, :]
    if DIRECT:  # one split: the final output
        tl.store(out_ptr + q_row * stride_ot + head[:, None] * stride_oh + dims[None, :],
                 out.to(out_ptr.dtype.element_ty), mask=mask)
    else:
        base = req.to(tl.int64) * stride_pr + head * stride_ph + split * stride_ps
        tl.store(part_out_ptr + base[:, None] + dims[None, :], out, mask=mask)
        lse = tl.where(l_i == 0.0, float("-inf"), m_i + tl.math.log2(tl.where(l_i == 0.0, 1.0, l_i)))
        lse_offs = req.to(tl.int64) * stride_lr + head * stride_lh + split
        tl.store(part_lse_ptr + lse_offs, lse, mask=row_ok)


@triton.jit
def _merge_kernel(out_ptr, part_out_ptr, part_lse_ptr, query_start_ptr,
                  stride_ot, stride_oh, stride_pr, stride_ph, stride_ps, stride_lr, stride_lh,
                  NUM_SPLITS: tl.constexpr, SPLITS_PAD: tl.constexpr,
                  HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, USE_PDL: tl.constexpr):
    """Program (request, head): output = sum_s w_s * out_s / sum_s w_s, w_s = 2^(lse_s - max)."""
    if USE_PDL:
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    req = tl.program_id(0)
    head = tl.program_id(1)
    splits = tl.arange(0, SPLITS_PAD)
    dims = tl.arange(0, HEAD_PAD)
    base = req.to(tl.int64) * stride_pr + head * stride_ph + splits * stride_ps
    lse_offs = req.to(tl.int64) * stride_lr + head * stride_lh + splits
    lse = tl.load(part_lse_ptr + lse_offs, mask=splits < NUM_SPLITS, other=float("-inf"))
    lse_max = tl.max(lse, 0)
    lse_max = tl.where(lse_max == float("-inf"), 0.0, lse_max)
    weight = tl.math.exp2(lse - lse_max)
    used = (splits < NUM_SPLITS) & (lse > float("-inf"))     # empty splits wrote no partial output
    parts = tl.load(part_out_ptr + base[:, None] + dims[None, :],
                    mask=used[:, None] & (dims[None, :] < HEAD_SIZE), other=0.0)
    total = tl.sum(weight, 0)
    out = tl.sum(parts * weight[:, None], 0) / tl.where(total == 0.0, 1.0, total)
    q_row = tl.load(query_start_ptr + req).to(tl.int64)
    tl.store(out_ptr + q_row * stride_ot + head * stride_oh + dims, out.to(out_ptr.dtype.element_ty),
             mask=dims < HEAD_SIZE)


def decode_attention(query: torch.Tensor, kv_cache: torch.Tensor, output: torch.Tensor,
                     query_start_loc: torch.Tensor, seq_lens: torch.Tensor, block_table: torch.Tensor,
                     scale: float, num_reqs: int, num_splits: int, part_out: torch.Tensor,
                     part_lse: torch.Tensor, config: dict | None = None,
                     new_kv: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
                     qk_rope: QKRope | None = None) -> None:
    """Paged attention of one query token per request; writes output [T, H, D] in place.

    new_kv (key [T, Hkv, D], value [T, Hkv, D], slot_mapping [T] int64): store this step's K/V in
    the same launch (as store_kv would; slots < 0 are skipped). None: the cache already holds them.
    qk_rope (needs new_kv): query and key are before their norm and rope, applied here as
    `qk_rope.apply` would (attention/qk_rope.py).

    query [T, H, D] (request r's token at row query_start_loc[r]); kv_cache
    [2, num_blocks, block_size, Hkv, D]; seq_lens [num_reqs] int32; block_table [num_reqs, *] int32.
    part_out [>= num_reqs, H, >= num_splits, D] float32 and part_lse [same without D] float32 are
    the split-KV workspace (unused when num_splits == 1; both contiguous in the last dim).
    `num_reqs` and `num_splits` are host ints; nothing here syncs with the device.
    """
    num_heads, head_size = query.shape[1], query.shape[2]
    num_kv_heads, block_size = kv_cache.shape[3], kv_cache.shape[2]
    if num_reqs == 0:
        return
    group = num_heads // num_kv_heads
    cfg = dict(config or DECODE_CONFIGS[_config_key(query, new_kv)])
    head_pad = max(16, triton.next_power_of_2(head_size))
    common = dict(HEAD_SIZE=head_size, HEAD_PAD=head_pad)
    strides = (part_out.stride(0), part_out.stride(1), part_out.stride(2),
               part_lse.stride(0), part_lse.stride(1))
    grid = (num_kv_heads, num_reqs, num_splits) if cfg.get("HEADS_FIRST") else (num_reqs, num_kv_heads, num_splits)
    _decode_kernel[grid](
        query, kv_cache, output, part_out, part_lse, query_start_loc, seq_lens, block_table,
        scale * math.log2(math.e), num_splits,
        query.stride(0), query.stride(1), output.stride(0), output.stride(1),
        *strides,
        kv_cache.stride(0), kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        block_table.stride(0),
        *_new_kv_args(new_kv, query), *_rope_args(qk_rope, new_kv, query, head_size),
        DIRECT=num_splits == 1, GROUP=group, BLOCK_H=max(16, triton.next_power_of_2(group)),
        BLOCK_SIZE=block_size, DOT_F32=query.device.type == "cpu",
        PRECISION="ieee" if query.dtype == torch.float32 else "tf32", STORE_KV=new_kv is not None, **common,
        **cfg, **pdl_kwargs(query))
    if num_splits > 1:
        _merge_kernel[(num_reqs, num_heads)](
            output, part_out, part_lse, query_start_loc,
            output.stride(0), output.stride(1), *strides,
            NUM_SPLITS=num_splits, SPLITS_PAD=triton.next_power_of_2(num_splits), **common,
            num_warps=4, **pdl_kwargs(query))


def _config_key(query: torch.Tensor, new_kv) -> str:
    """DECODE_CONFIGS' key: "cpu", else "cuda" when the kernel stores the step's K/V, else "cuda_plain"."""
    if query.device.type == "cpu":
        return "cpu"
    return "cuda" if new_kv is not None else "cuda_plain"


def _new_kv_args(new_kv, query: torch.Tensor) -> tuple:
    """The kernel's key, value, slot_mapping pointers and key/value strides (unused placeholders
    when there is nothing to store)."""
    if new_kv is None:
        return query, query, query, 0, 0, 0, 0
    key, value, slot_mapping = new_kv
    if key.stride(2) != 1 or value.stride(2) != 1 or slot_mapping.stride(0) != 1:
        raise ValueError("key and value must be contiguous in head_size, slot_mapping contiguous")
    return key, value, slot_mapping, key.stride(0), key.stride(1), value.stride(0), value.stride(1)


def _rope_args(qk_rope: QKRope | None, new_kv, query: torch.Tensor, head_size: int) -> tuple:
    """positions, cos/sin cache, its row stride, q and k norm weights, eps (placeholders without
    qk_rope), then the ROPE, ROTARY_DIM and HAS_NORM constexprs."""
    if qk_rope is None:
        return query, query, 0, query, query, 0.0, False, 2, False
    if new_kv is None:
        raise ValueError("qk_rope needs new_kv: the key is rotated where it is stored")
    cache = qk_rope.cos_sin_cache
    rotary_dim = check_cos_sin_cache(cache, head_size)
    has_norm = qk_rope.q_norm_weight is not None
    return (qk_rope.positions, cache, cache.stride(0),
            qk_rope.q_norm_weight if has_norm else query, qk_rope.k_norm_weight if has_norm else query,
            qk_rope.eps, True, rotary_dim, has_norm)
