"""`flash_attn`: paged attention through the flash-attn 2 package.

Decode-only batches call `flash_attn_with_kvcache` with the block table; other batches call
`flash_attn_varlen_func` with `block_table=`, which reads cached context and the new tokens (already
stored through the slot mapping) from the block cache. flash-attn reads paged K/V only in blocks
whose size is a multiple of 256. The KV cache must be in the model's dtype: flash-attn 2 has no fp8
KV cache (`--kv-cache-dtype fp8` selects triton or torch_ref instead). CUDA graphs (decode-only)
work as for `triton`: the runner calls `builder.build_for_capture(common)` before capture and before
every replay, outside the capture.
"""
from __future__ import annotations

import importlib.util
from dataclasses import dataclass

import torch

from attention.backend import (AttentionBackend, AttentionImpl, AttentionMetadataBuilder,
                               CommonAttentionMetadata, CudaGraphSupport)


@dataclass
class FlashAttnMetadata:
    """Per-step inputs of FlashAttnImpl; tensors on the device, ints on the host.

    cu_seq_lens [num_reqs + 1] int32 is the prefix sum of seq_lens (None for decode-only steps)."""

    num_reqs: int
    max_query_len: int
    max_seq_len: int
    is_decode: bool
    query_start_loc: torch.Tensor
    seq_lens: torch.Tensor
    cu_seq_lens: torch.Tensor | None
    block_table: torch.Tensor
    slot_mapping: torch.Tensor


class FlashAttnMetadataBuilder(AttentionMetadataBuilder):
    cudagraph_support = CudaGraphSupport.DECODE_ONLY

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._capture = None

    def build(self, common: CommonAttentionMetadata) -> FlashAttnMetadata:
        is_decode = common.max_query_len == 1
        cu_seq_lens = None
        if not is_decode:
            cu_seq_lens = torch.nn.functional.pad(torch.cumsum(common.seq_lens, 0, dtype=torch.int32), (1, 0))
        return FlashAttnMetadata(
            num_reqs=common.num_reqs, max_query_len=common.max_query_len, max_seq_len=common.max_seq_len,
            is_decode=is_decode, query_start_loc=common.query_start_loc, seq_lens=common.seq_lens,
            cu_seq_lens=cu_seq_lens, block_table=common.block_table, slot_mapping=common.slot_mapping)

    def build_for_capture(self, common: CommonAttentionMetadata) -> FlashAttnMetadata:
        """Decode-only metadata whose tensors are views into fixed buffers (refilled per replay)."""
        from attention.backends.triton_attn import CaptureBuffers
        if self._capture is None:
            self._capture = CaptureBuffers(self.max_num_seqs, self.max_model_len, self.block_size, self.device)
        return self.build(self._capture.fill(common))


class FlashAttnImpl(AttentionImpl):
    def forward(self, query, key, value, kv_cache, metadata: FlashAttnMetadata, output) -> None:
        """Store K/V (Triton kernel), then attend with flash-attn; shapes as in AttentionImpl."""
        from flash_attn import flash_attn_varlen_func, flash_attn_with_kvcache

        from attention.ops.store_kv import store_kv
        store_kv(key, value, kv_cache, metadata.slot_mapping)
        num_reqs = metadata.num_reqs
        if metadata.is_decode:
            out = flash_attn_with_kvcache(
                query[:num_reqs].unsqueeze(1), kv_cache[0], kv_cache[1], cache_seqlens=metadata.seq_lens,
                block_table=metadata.block_table, softmax_scale=self.scale, causal=True)
            output[:num_reqs].copy_(out.squeeze(1))
        else:
            out = flash_attn_varlen_func(
                query, kv_cache[0], kv_cache[1], metadata.query_start_loc, metadata.cu_seq_lens,
                metadata.max_query_len, metadata.max_seq_len, softmax_scale=self.scale, causal=True,
                block_table=metadata.block_table)
            output.copy_(out)


class FlashAttnBackend(AttentionBackend):
    name = "flash_attn"
    supported_dtypes = (torch.float16, torch.bfloat16)
    supported_head_sizes = (64, 128)  # what the project's flash-attn wheel (sm_90) is built for
    default_block_size = 256
    supported_kv_cache_dtypes = ()  # flash-attn 2 reads K/V only in the query's dtype (no fp8 KV)

    @staticmethod
    def get_impl_cls():
        return FlashAttnImpl

    @staticmethod
    def get_builder_cls():
        return FlashAttnMetadataBuilder

    @classmethod
    def supports_block_size(cls, block_size: int) -> bool:
        """flash-attn's paged KV needs blocks of a multiple of 256 tokens."""
        return block_size > 0 and block_size % 256 == 0

    @classmethod
    def validate(cls, device, dtype, head_size, block_size, kv_cache_dtype=None) -> list[str]:
        reasons = []
        if importlib.util.find_spec("flash_attn") is None:
            reasons.append("the flash_attn package is not installed (pip install flash-attn)")
        if device.type != "cuda":
            reasons.append(f"needs a CUDA device, got {device.type}")
        elif torch.cuda.is_available():
            major, minor = torch.cuda.get_device_capability(device)
            if major < 8:
                reasons.append(f"needs compute capability >= 8.0 (Ampere), the GPU has {major}.{minor}")
        reasons += super().validate(device, dtype, head_size, block_size, kv_cache_dtype)
        if block_size is not None and not cls.supports_block_size(block_size):
            reasons[-1] += " (must be a multiple of 256)"
        return reasons
