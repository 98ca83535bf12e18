"""Triton kernel: optional per-head RMSNorm (Qwen3's q_norm / k_norm) then neox rope, for q and k at once."""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from models.layers.ops import num_warps_for
from models.layers.ops.pdl import pdl_kwargs


@triton.jit
def rope_partner(dims, ROTARY_DIM: tl.constexpr):
    """The dim whose value rotates with each of `dims` (neox halves); itself past ROTARY_DIM."""
    HALF: tl.constexpr = ROTARY_DIM // 2
    partner = tl.where(dims < HALF, dims + HALF, dims - HALF)
    return tl.where(dims < ROTARY_DIM, partner, dims)


@triton.jit
def rope_cos_sin(cache_ptr, position, stride_cache, dims, ROTARY_DIM: tl.constexpr):
    """cos, sin of `position` for each of `dims` (float32; 1 and 0 past ROTARY_DIM) from the
    [max_position, ROTARY_DIM] cos | sin cache."""
    HALF: tl.constexpr = ROTARY_DIM // 2
    rotated = dims < ROTARY_DIM
    freq = tl.where(dims < HALF, dims, dims - HALF)
    row = cache_ptr + position.to(tl.int64) * stride_cache
    return tl.load(row + freq, mask=rotated, other=1.0), tl.load(row + HALF + freq, mask=rotated, other=0.0)


@triton.jit
def norm_rope(x, x_partner, weight_ptr, dims, partner, cos, sin, eps, HEAD_SIZE: tl.constexpr,
              ROTARY_DIM: tl.constexpr, HAS_NORM: tl.constexpr, OUT_DTYPE: tl.constexpr):
    """Heads x [R, HEAD_PAD] and their rope partners x_partner (x at `partner`), float32, zero past
    HEAD_SIZE -> optional RMSNorm (weight [HEAD_SIZE]) then neox rope, in OUT_DTYPE. Each step is
    rounded to OUT_DTYPE as the torch path rounds it (norm module, then rope)."""
    if HAS_NORM:
        rstd = tl.rsqrt(tl.sum(x * x, axis=1) / HEAD_SIZE + eps)[:, None]
        in_head = dims < HEAD_SIZE
        weight = tl.load(weight_ptr + dims, mask=in_head, other=0.0).to(tl.float32)[None, :]
        weight_partner = tl.load(weight_ptr + partner, mask=in_head, other=0.0).to(tl.float32)[None, :]
        x = (x * rstd * weight).to(OUT_DTYPE).to(tl.float32)
        x_partner = (x_partner * rstd * weight_partner).to(OUT_DTYPE).to(tl.float32)
    # First half: x1 * cos - x2 * sin; second half: x2 * cos + x1 * sin; past ROTARY_DIM: x.
    signed_partner = tl.where((dims < ROTARY_DIM // 2)[None, :], -x_partner, x_partner)
    return (x * cos[None, :] + signed_partner * sin[None, :]).to(OUT_DTYPE)


@triton.jit
def _norm_rope_heads(src, dst, weight_ptr, cos, sin, eps, NUM_HEADS: tl.constexpr, HEADS_PAD: tl.constexpr,
                     HEAD_SIZE: tl.constexpr, HEAD_PAD: tl.constexpr, ROTARY_DIM: tl.constexpr,
                     HAS_NORM: tl.constexpr):
    """One token's [NUM_HEADS, HEAD_SIZE] row at src -> dst; cos, sin: [HEAD_PAD] (1 and 0 past rope).

    Element d reads x[d] and its rope partner x[d +- HALF] (itself past ROTARY_DIM); dst never
    aliases src, so no element is read after a write.
    """
    dims = tl.arange(0, HEAD_PAD)
    partner = rope_partner(dims, ROTARY_DIM)
    heads = tl.arange(0, HEADS_PAD)[:, None] * HEAD_SIZE
    mask = (tl.arange(0, HEADS_PAD)[:, None] < NUM_HEADS) & (dims[None, :] < HEAD_SIZE)
    x = tl.load(src + heads + dims[None, :], mask=mask, other=0.0).to(tl.float32)
    x_partner = tl.load(src + heads + partner[None, :], mask=mask, other=0.0).to(tl.float32)
    out = norm_rope(x, x_partner, weight_ptr, dims, partner, cos, sin, eps, HEAD_SIZE, ROTARY_DIM, HAS_NORM,
                    dst.dtype.element_ty)
    tl.store(dst + heads + dims[None, :], out, mask=mask)


@triton.jit
def _qk_norm_rope_kernel(q_ptr, k_ptr, q_out_ptr, k_out_ptr, positions_ptr, cache_ptr,
                         q_weight_ptr, k_weight_ptr, stride_qt, stride_kt, stride_cache, eps,
                         NUM_HEADS: tl.constexpr, NUM_KV_HEADS: tl.constexpr, HEAD_SIZE: tl.constexpr,
                         ROTARY_DIM: tl.constexpr, HEADS_PAD: tl.constexpr, KV_HEADS_PAD: tl.constexpr,
                         HEAD_PAD: tl.constexpr, HAS_NORM: tl.constexpr, USE_PDL: tl.constexpr):
    """One program per token: all its q heads, then all its k heads, with one cos/sin row."""
    if USE_PDL:  # see models/layers/ops/pdl.py
        tl.extra.cuda.gdc_launch_dependents()
        tl.extra.cuda.gdc_wait()
    token = tl.program_id(0).to(tl.int64)
    cos, sin = rope_cos_sin(cache_ptr, tl.load(positions_ptr + token), stride_cache, tl.arange(0, HEAD_PAD),
                            ROTARY_DIM)
    _norm_rope_heads(q_ptr + token * stride_qt, q_out_ptr + token * (NUM_HEADS * HEAD_SIZE), q_weight_ptr,
                     cos, sin, eps, NUM_HEADS, HEADS_PAD, HEAD_SIZE, HEAD_PAD, ROTARY_DIM, HAS_NORM)
    _norm_rope_heads(k_ptr + token * stride_kt, k_out_ptr + token * (NUM_KV_HEADS * HEAD_SIZE), k_weight_ptr,
                     cos, sin, eps, NUM_KV_HEADS, KV_HEADS_PAD, HEAD_SIZE, HEAD_PAD, ROTARY_DIM, HAS_NORM)


def _check(name: str, x: torch.Tensor, head_size: int) -> int:
    """Number of heads in x [T, N * head_size] (unit last stride)."""
    if x.dim() != 2 or x.shape[1] % head_size or x.stride(1) != 1:
        raise ValueError(f"{name} must be [T, num_heads * {head_size}] with a unit last stride, "
                         f"got shape {tuple(x.shape)} strides {x.stride()}")
    return x.shape[1] // head_size


def check_cos_sin_cache(cos_sin_cache: torch.Tensor, head_size: int) -> int:
    """The rotary_dim of a [max_position, rotary_dim] cos | sin cache, after checking what the kernels
    need: float32, unit last stride, rotary_dim even and in [2, head_size]."""
    rotary_dim = cos_sin_cache.shape[1]
    if rotary_dim % 2 or not 0 < rotary_dim <= head_size:
        raise ValueError(f"cos_sin_cache.shape[1] (rotary_dim) must be even and in [2, {head_size}], "
                         f"got {rotary_dim}")
    if cos_sin_cache.stride(1) != 1 or cos_sin_cache.dtype != torch.float32:
        raise ValueError("cos_sin_cache must be float32 with a unit last stride")
    return rotary_dim


def qk_norm_rope(q: torch.Tensor, k: torch.Tensor, positions: torch.Tensor, cos_sin_cache: torch.Tensor,
                 q_norm_weight: torch.Tensor | None, k_norm_weight: torch.Tensor | None, eps: float,
                 head_size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """One launch: (optional) per-head RMSNorm then neox rope on q and k; returns new contiguous tensors.

    q: [T, H * head_size], k: [T, Hkv * head_size], same dtype (bf16/fp16/fp32), row strides free
    (e.g. views into the fused qkv output). positions: [T] int64, each < cos_sin_cache.shape[0] (not
    checked: no host sync). cos_sin_cache: [max_position, rotary_dim] float32, cos | sin halves;
    rope covers the first rotary_dim dims of each head. Norm weights: [head_size], both or neither.
    Returns (q_out [T, H * head_size], k_out [T, Hkv * head_size]) in q.dtype; the inputs are untouched.
    """
    num_heads, num_kv_heads = _check("q", q, head_size), _check("k", k, head_size)
    rotary_dim = check_cos_sin_cache(cos_sin_cache, head_size)
    if k.dtype != q.dtype:
        raise ValueError(f"k.dtype must equal q.dtype {q.dtype}, got {k.dtype}")
    if (q_norm_weight is None) != (k_norm_weight is None):
        raise ValueError("q_norm_weight and k_norm_weight must be given together")
    if q_norm_weight is not None and k_norm_weight.dtype != q_norm_weight.dtype:
        raise ValueError(f"k_norm_weight.dtype must equal q_norm_weight.dtype {q_norm_weight.dtype}")
    q_out = torch.empty(q.shape, dtype=q.dtype, device=q.device)
    k_out = torch.empty(k.shape, dtype=k.dtype, device=k.device)
    num_tokens = q.shape[0]
    if num_tokens == 0:
        return q_out, k_out
    has_norm = q_norm_weight is not None
    heads_pad, head_pad = triton.next_power_of_2(num_heads), triton.next_power_of_2(head_size)
    _qk_norm_rope_kernel[(num_tokens,)](
        q, k, q_out, k_out, positions, cos_sin_cache,
        q_norm_weight if has_norm else q, k_norm_weight if has_norm else k,
        q.stride(0), k.stride(0), cos_sin_cache.stride(0), eps,
        NUM_HEADS=num_heads, NUM_KV_HEADS=num_kv_heads, HEAD_SIZE=head_size, ROTARY_DIM=rotary_dim,
        HEADS_PAD=heads_pad, KV_HEADS_PAD=triton.next_power_of_2(num_kv_heads), HEAD_PAD=head_pad,
        HAS_NORM=has_norm, num_warps=num_warps_for(heads_pad * head_pad), **pdl_kwargs(q))
    return q_out, k_out
