"""`triton`: paged attention with this project's Triton kernels (attention/ops).

Decode-only batches (max_query_len == 1) run the split-KV decode kernel; any other batch runs the
prefill/extend kernel, which serves decodes, fresh prefills and chunked prefills in one launch.

CUDA graphs (decode batches, and steps with prefill tokens of up to MAX_PREFILL_GRAPH_TOKENS tokens):
the runner calls `builder.build_for_capture(common)` before capturing a step shape AND again before
every replay of it, outside the capture. It copies `common`'s query_start_loc, seq_lens,
block_table and slot_mapping into fixed-address buffers (same stream, no host sync) and returns
metadata whose tensors are views into them. A decode graph's split count depends only on num_reqs
(it assumes max_model_len); a prefill graph's grid only on its padded request and token counts (it is
captured with one request holding every token, and the kernel skips the query tiles past each
request's real length), so the captured launch shapes stay valid. Padded requests need seq_len 0,
query_start_loc continuing by 1 (decode graphs) or by 0 (prefill graphs); padded tokens after the
last request's (prefill graphs) need slot -1.

KV layout: the cache always has the shape [2, num_blocks, block_size, Hkv, D]; the kernels take its
strides. ENGINE_TRITON_KV_LAYOUT=HND keeps each (block, KV head) contiguous in memory behind that
shape (block_size x D elements: 2 KiB in fp8 at block 16, against 128 B runs per token in the
default NHD order). H100: the fp8 decode kernel 1-3% faster, bf16 equal; opt-in.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import triton

from attention.backend import (MAX_PREFILL_GRAPH_TOKENS, AttentionBackend, AttentionImpl, AttentionMetadataBuilder,
                               CommonAttentionMetadata, CudaGraphSupport, block_table_cols)
from attention.ops.decode_attention import decode_attention
from attention.ops.prefill_attention import prefill_attention
from attention.ops.store_kv import store_kv

# Split-KV policy: aim for `waves` programs per multiprocessor; no split shorter than min_split_len.
# H100 sweep (2026-11-25): waves 2 was best at 32 x 16k (waves 4 23% slower there); min_split_len 64
# makes batch 1 x 1k 24% faster than 256 and costs nothing at 16k. 2026-11-26: waves 8 (2-3 splits
# at 33-131 requests, whose longest contexts otherwise make the tail) gave Qwen3-0.6B throughput
# 19,616 -> 19,831 tok/s and batch-1 latency 1.161 ms/token (`gpu_suite.sh knobs2`, `blocks`).
# ENGINE_TRITON_MAX_SPLITS and ENGINE_TRITON_SPLIT_WAVES override max_splits and waves (A/B knobs).
SPLIT_POLICY = dict(waves=int(os.environ.get("ENGINE_TRITON_SPLIT_WAVES", "8")), min_split_len=64,
                    max_splits=int(os.environ.get("ENGINE_TRITON_MAX_SPLITS", "64")))
# Decode steps store their K/V inside the decode kernel (one launch less per layer; H100 batch-1
# latency 2026-11-25: Qwen3-0.6B 1.284 -> 1.261 ms/token, Qwen3-8B 6.052 -> 5.977).
# ENGINE_TRITON_DECODE_STORES_KV=0 launches store_kv first instead.
DECODE_STORES_KV = os.environ.get("ENGINE_TRITON_DECODE_STORES_KV", "1") == "1"
# Decode steps also take the model's q/k norm and rope into the decode kernel (attention/qk_rope.py:
# one launch less per layer); ENGINE_TRITON_FUSED_QK_ROPE=0 runs the model's own kernel for it.
FUSED_QK_ROPE = os.environ.get("ENGINE_TRITON_FUSED_QK_ROPE", "1") == "1"
KV_LAYOUTS = ("NHD", "HND")
KV_LAYOUT = os.environ.get("ENGINE_TRITON_KV_LAYOUT", "NHD")


@dataclass
class TritonAttnMetadata:
    """What TritonAttnImpl reads each step. Tensors live on the device; ints are host ints.

    part_out [num_reqs, H, num_splits, D] float32 and part_lse [num_reqs, H, num_splits] float32
    are the split-KV workspace (views into one buffer of the builder)."""

    num_reqs: int
    num_tokens: int
    max_query_len: int
    max_seq_len: int
    is_decode: bool
    num_splits: int
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    part_out: torch.Tensor
    part_lse: torch.Tensor


class CaptureBuffers:
    """Fixed-address copies of the per-step tensors, for CUDA-graph capture and replay."""

    def __init__(self, max_num_seqs: int, max_model_len: int, block_size: int, device: torch.device) -> None:
        max_blocks_per_req = block_table_cols(max_model_len, block_size)   # as wide as any step's table
        max_num_tokens = max(max_num_seqs, MAX_PREFILL_GRAPH_TOKENS)
        self.query_start_loc = torch.zeros(max_num_seqs + 1, dtype=torch.int32, device=device)
        self.seq_lens = torch.zeros(max_num_seqs, dtype=torch.int32, device=device)
        self.block_table = torch.zeros(max_num_seqs, max_blocks_per_req, dtype=torch.int32, device=device)
        self.slot_mapping = torch.full((max_num_tokens,), -1, dtype=torch.int64, device=device)

    def fill(self, common: CommonAttentionMetadata) -> CommonAttentionMetadata:
        """Copy `common` in; return a copy of it that points into the buffers."""
        num_reqs, num_tokens = common.num_reqs, common.num_tokens
        width = common.block_table.shape[1]
        if num_reqs > self.seq_lens.shape[0]:
            raise ValueError(f"num_reqs must be <= {self.seq_lens.shape[0]} (max_num_seqs), got {num_reqs}")
        if num_tokens > self.slot_mapping.shape[0] or num_reqs > num_tokens:
            raise ValueError(f"num_tokens must be in [num_reqs, {self.slot_mapping.shape[0]}], got {num_tokens}")
        if width > self.block_table.shape[1]:
            raise ValueError(f"block_table width must be <= {self.block_table.shape[1]}, got {width}")
        qsl, seq_lens = self.query_start_loc[:num_reqs + 1], self.seq_lens[:num_reqs]
        table, slots = self.block_table[:num_reqs], self.slot_mapping[:num_tokens]
        qsl.copy_(common.query_start_loc[:num_reqs + 1], non_blocking=True)
        seq_lens.copy_(common.seq_lens[:num_reqs], non_blocking=True)
        table[:, :width].copy_(common.block_table[:num_reqs], non_blocking=True)
        slots.copy_(common.slot_mapping[:num_tokens], non_blocking=True)
        return CommonAttentionMetadata(
            num_reqs=num_reqs, num_tokens=num_tokens, query_start_loc=qsl,
            query_start_loc_cpu=common.query_start_loc_cpu, seq_lens=seq_lens,
            seq_lens_cpu=common.seq_lens_cpu, max_query_len=common.max_query_len, max_seq_len=common.max_seq_len,
            block_table=table, slot_mapping=slots, block_size=common.block_size)


class TritonAttnMetadataBuilder(AttentionMetadataBuilder):
    cudagraph_support = CudaGraphSupport.DECODE_AND_SMALL_STEPS

    def __init__(self, num_heads, num_kv_heads, head_size, block_size, max_num_seqs, max_model_len,
                 device) -> None:
        super().__init__(num_heads, num_kv_heads, head_size, block_size, max_num_seqs, max_model_len, device)
        device = torch.device(device)
        self.num_sms = (torch.cuda.get_device_properties(device).multi_processor_count
                        if device.type == "cuda" else 4)
        capacity = max(r * self.num_splits(r, max_model_len) for r in range(1, max_num_seqs + 1))
        self._part_out = torch.empty(capacity * num_heads * head_size, dtype=torch.float32, device=device)
        self._part_lse = torch.empty(capacity * num_heads, dtype=torch.float32, device=device)
        self._capture: CaptureBuffers | None = None

    def num_splits(self, num_reqs: int, max_seq_len: int) -> int:
        """How many chunks each sequence's context is cut into for the decode kernel."""
        programs = num_reqs * self.num_kv_heads
        target = SPLIT_POLICY["waves"] * self.num_sms
        if programs >= target:
            return 1
        by_len = max(1, max_seq_len // SPLIT_POLICY["min_split_len"])
        return max(1, min(triton.cdiv(target, programs), by_len, SPLIT_POLICY["max_splits"]))

    def build(self, common: CommonAttentionMetadata) -> TritonAttnMetadata:
        return self._build(common, common.max_seq_len)

    def build_for_capture(self, common: CommonAttentionMetadata) -> TritonAttnMetadata:
        """Metadata for a decode-only batch or a small step with prefill tokens whose tensors are
        views into fixed buffers; see the module docstring for how the runner refills them before each replay."""
        if self._capture is None:
            self._capture = CaptureBuffers(self.max_num_seqs, self.max_model_len, self.block_size, self.device)
        return self._build(self._capture.fill(common), self.max_model_len)

    def _build(self, common: CommonAttentionMetadata, split_seq_len: int) -> TritonAttnMetadata:
        num_reqs = common.num_reqs
        is_decode = common.max_query_len == 1
        splits = self.num_splits(num_reqs, split_seq_len) if is_decode else 1
        if num_reqs * splits * self.num_heads > self._part_lse.numel():
            splits = 1  # more requests than max_num_seqs: no workspace for splitting
        rows = num_reqs * self.num_heads * splits
        part_out = self._part_out[:rows * self.head_size].view(num_reqs, self.num_heads, splits, self.head_size)
        part_lse = self._part_lse[:rows].view(num_reqs, self.num_heads, splits)
        return TritonAttnMetadata(
            num_reqs=num_reqs, num_tokens=common.num_tokens, max_query_len=common.max_query_len,
            max_seq_len=common.max_seq_len, is_decode=is_decode, num_splits=splits,
            query_start_loc=common.query_start_loc, seq_lens=common.seq_lens,
            block_table=common.block_table, slot_mapping=common.slot_mapping,
            part_out=part_out, part_lse=part_lse)


class TritonAttnImpl(AttentionImpl):
    def fuses_qk_rope(self, metadata: TritonAttnMetadata, qk_rope) -> bool:
        """Decode steps whose kernel stores K/V apply the q/k norm and rope in it too."""
        return FUSED_QK_ROPE and DECODE_STORES_KV and metadata.is_decode

    def forward(self, query, key, value, kv_cache, metadata: TritonAttnMetadata, output, qk_rope=None) -> None:
        """Store K/V, then attend; see AttentionImpl.forward for shapes. No host sync."""
        fused_store = metadata.is_decode and DECODE_STORES_KV
        if qk_rope is not None and not fused_store:
            raise ValueError("qk_rope is fused only into decode steps that store K/V in the decode kernel")
        if not fused_store:
            store_kv(key, value, kv_cache, metadata.slot_mapping)
        if metadata.is_decode:
            decode_attention(query, kv_cache, output, metadata.query_start_loc, metadata.seq_lens,
                             metadata.block_table, self.scale, metadata.num_reqs, metadata.num_splits,
                             metadata.part_out, metadata.part_lse,
                             new_kv=(key, value, metadata.slot_mapping) if fused_store else None,
                             qk_rope=qk_rope)
        else:
            prefill_attention(query, kv_cache, output, metadata.query_start_loc, metadata.seq_lens,
                              metadata.block_table, self.scale, metadata.num_reqs, metadata.max_query_len)


class TritonAttnBackend(AttentionBackend):
    name = "triton"
    supported_dtypes = (torch.float16, torch.bfloat16, torch.float32)
    supported_head_sizes = None  # any size up to MAX_HEAD_SIZE (padded to a power of two inside)
    # 64 tokens: one block id per BLOCK_N = 64 key tile in the decode kernel (SCALAR_TABLE) and a
    # block table a quarter of block 16's to copy each step. H100, 2026-11-26, Qwen3-0.6B throughput
    # 20,022 tok/s at block 16, 20,276 at 64, 20,344 at 128 (`gpu_suite.sh blocks`); 64 keeps prefix
    # caching finer than 128. Any block size works (--block-size).
    default_block_size = 64
    MAX_HEAD_SIZE = 256
    supported_kv_cache_dtypes = (torch.float8_e4m3fn,)  # stored by store_kv, converted per tile on load

    @staticmethod
    def get_impl_cls():
        return TritonAttnImpl

    @classmethod
    def allocate_kv_cache(cls, num_blocks, block_size, num_kv_heads, head_size, dtype, device) -> torch.Tensor:
        """The shape of `get_kv_cache_shape`, in KV_LAYOUT's memory order (see the module docstring)."""
        if KV_LAYOUT not in KV_LAYOUTS:
            raise ValueError(f"ENGINE_TRITON_KV_LAYOUT must be one of {KV_LAYOUTS}, got {KV_LAYOUT!r}")
        if KV_LAYOUT == "NHD":
            return super().allocate_kv_cache(num_blocks, block_size, num_kv_heads, head_size, dtype, device)
        hnd = torch.zeros(2, num_blocks, num_kv_heads, block_size, head_size, dtype=dtype, device=device)
        return hnd.permute(0, 1, 3, 2, 4)

    @staticmethod
    def get_builder_cls():
        return TritonAttnMetadataBuilder

    @classmethod
    def supports_block_size(cls, block_size: int) -> bool:
        """Powers of two from 16 to 256."""
        return 16 <= block_size <= 256 and block_size & (block_size - 1) == 0

    @classmethod
    def validate(cls, device, dtype, head_size, block_size, kv_cache_dtype=None) -> list[str]:
        reasons = super().validate(device, dtype, head_size, block_size, kv_cache_dtype)
        if block_size is not None and not cls.supports_block_size(block_size):
            reasons[-1] += " (supported: powers of two from 16 to 256)"
        if not 8 <= head_size <= cls.MAX_HEAD_SIZE or head_size % 8:
            reasons.append(f"head size {head_size} is not supported (supported: multiples of 8 up to "
                           f"{cls.MAX_HEAD_SIZE})")
        if device.type == "cuda" and torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            if dtype == torch.bfloat16 and major < 8:
                reasons.append(f"bfloat16 needs compute capability >= 8.0, the GPU has {major}.{minor}")
            if kv_cache_dtype == torch.float8_e4m3fn and (major, minor) < (8, 9):
                reasons.append(f"an fp8 KV cache needs compute capability >= 8.9 in Triton, the GPU has "
                               f"{major}.{minor}")
        return reasons
