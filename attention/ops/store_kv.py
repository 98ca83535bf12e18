"""Triton kernel: write this step's K/V into the block cache through the slot mapping.

The cache may have another dtype than K/V: an fp8 (float8_e4m3fn) cache stores them cast with a
scale of 1.0 (rounded to nearest; on the GPU values beyond e4m3's +-448 saturate to +-448). Triton's
CPU interpreter rounds float -> fp8 wrongly (triton 3.9: no carry into the exponent, ties away), so
the fp8 store is tested on CUDA only.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.layers.ops.pdl import pdl_kwargs


@triton.jit
def slot_offset(slot, block_size, stride_cblock, stride_ctok):
    """Element offset of cache slot `slot` (block_id * block_size + offset in the block) for any
    cache strides (NHD or HND memory order behind [.., num_blocks, block_size, Hkv, D])."""
    return (slot // block_size) * stride_cblock + (slot % block_size) * stride_ctok


@triton.jit
def _store_kv_kernel(key_ptr, value_ptr, cache_ptr, slot_ptr, stride_slot,
                     stride_kt, stride_kh, stride_vt, stride_vh,
                     value_offset, block_size, stride_cblock, stride_ctok, stride_ch,
                     NUM_KV_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr,
                     HEADS_PAD: tl.constexpr, HEAD_PAD: tl.constexpr, USE_PDL: tl.constexpr):
    """One program per token: copies its [Hkv, D] key and value rows to cache slot `slot`, cast to
    the cache's dtype (a no-op when they match)."""
    if USE_PDL:  # see models/layers/ops/pdl.py
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    token = tl.program_id(0).to(tl.int64)
    slot = tl.load(slot_ptr + token * stride_slot).to(tl.int64)
    if slot < 0:
        return
    heads = tl.arange(0, HEADS_PAD)[:, None]
    dims = tl.arange(0, HEAD_PAD)[None, :]
    mask = (heads < NUM_KV_HEADS) & (dims < HEAD_SIZE)
    key = tl.load(key_ptr + token * stride_kt + heads * stride_kh + dims, mask=mask)
    value = tl.load(value_ptr + token * stride_vt + heads * stride_vh + dims, mask=mask)
    dst = cache_ptr + slot_offset(slot, block_size, stride_cblock, stride_ctok) + heads * stride_ch + dims
    tl.store(dst, key.to(cache_ptr.dtype.element_ty), mask=mask)
    tl.store(dst + value_offset, value.to(cache_ptr.dtype.element_ty), mask=mask)


def store_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write key/value [T, Hkv, D] into kv_cache [2, num_blocks, block_size, Hkv, D] (in the
    cache's dtype: K/V's own, or float8_e4m3fn with scale 1.0).

    slot_mapping [T] int64 holds `block_id * block_size + offset`; slots < 0 (padding) are not
    written. The last dims of key, value and cache must be contiguous; the cache's other strides are
    free (e.g. a [.., Hkv, block_size, D] memory order behind the shape). No host sync: safe inside
    CUDA-graph capture.
    """
    num_tokens, num_kv_heads, head_size = key.shape
    if num_tokens == 0:
        return
    if key.stride(2) != 1 or value.stride(2) != 1:
        raise ValueError("key and value must be contiguous in head_size")
    if kv_cache.stride(4) != 1:
        raise ValueError("kv_cache must be contiguous in head_size")
    _store_kv_kernel[(num_tokens,)](
        key, value, kv_cache, slot_mapping, slot_mapping.stride(0),
        key.stride(0), key.stride(1), value.stride(0), value.stride(1),
        kv_cache.stride(0), kv_cache.shape[2], kv_cache.stride(1), kv_cache.stride(2), kv_cache.stride(3),
        NUM_KV_HEADS=num_kv_heads, HEAD_SIZE=head_size,
        HEADS_PAD=triton.next_power_of_2(num_kv_heads), HEAD_PAD=triton.next_power_of_2(head_size),
        num_warps=4 if num_kv_heads * head_size >= 1024 else 1, **pdl_kwargs(key))
