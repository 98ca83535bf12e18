"""The three roles of an attention backend, and the per-step metadata they share.

A backend is chosen once at start-up (see `attention/selector.py`) and stays fixed for the run:
- `AttentionBackend`: class-level description (name, KV-cache layout, what it supports).
- `AttentionMetadataBuilder`: one per engine; turns `CommonAttentionMetadata` into the kernel's inputs.
- `AttentionImpl`: one per layer; writes K/V through the slot mapping and attends.
"""
from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

PAD_SLOT_ID = -1
# Block tables are [num_reqs, num_cols] with num_cols a multiple of this: Triton specializes kernels on
# integer arguments divisible by 16, so a row stride that follows each step's longest context would
# build new kernel variants mid-run (H100: a 0.6 s build in the first throughput run), and telling
# Triton not to specialize on it made the prefill kernel slower.
BLOCK_TABLE_COLS_MULTIPLE = 16


def block_table_cols(num_tokens: int, block_size: int) -> int:
    """Columns of a block table whose rows hold `num_tokens` tokens: enough blocks, rounded up to a
    multiple of BLOCK_TABLE_COLS_MULTIPLE (the extra columns are never read)."""
    blocks = -(-num_tokens // block_size)
    return -(-blocks // BLOCK_TABLE_COLS_MULTIPLE) * BLOCK_TABLE_COLS_MULTIPLE


# The most tokens of a step with prefill tokens that the runner captures in CUDA graphs (vLLM: 512).
MAX_PREFILL_GRAPH_TOKENS = 512


class CudaGraphSupport(enum.Enum):
    """Which steps of a builder may be captured in a CUDA graph: none; decode-only batches; those and
    every step of up to MAX_PREFILL_GRAPH_TOKENS tokens (prefills and mixed prefill + decode steps,
    requests and tokens padded); any step."""

    NEVER = 0
    DECODE_ONLY = 1
    DECODE_AND_SMALL_STEPS = 2
    ALWAYS = 3


@dataclass
class CommonAttentionMetadata:
    """What the runner knows about one step, for every backend.

    Requests are laid out in the batch in order; request r owns query tokens
    `query_start_loc[r]:query_start_loc[r+1]`. Tokens past `query_start_loc[-1]` (up to
    `num_tokens`) are padding: their slot is `PAD_SLOT_ID` and their output is ignored.

    Attributes:
        num_reqs: number of requests in the batch.
        num_tokens: number of query tokens in the (possibly padded) batch, T.
        query_start_loc: [num_reqs + 1] int32 on the device; prefix sum of query lengths.
        query_start_loc_cpu: the same on the CPU.
        seq_lens: [num_reqs] int32 on the device; tokens in the cache after this step
            (`num_computed_tokens + query_len`).
        seq_lens_cpu: the same on the CPU.
        max_query_len: largest query length in the batch.
        max_seq_len: largest sequence length in the batch.
        block_table: [num_reqs, max_blocks_per_req] int32 on the device; logical block i of
            request r is physical block `block_table[r, i]` (the read map).
        slot_mapping: [num_tokens] int64 on the device; `block_id * block_size + offset` of
            each token's K/V, `PAD_SLOT_ID` for padding (the write map).
        block_size: tokens per KV block.
    """

    num_reqs: int
    num_tokens: int
    query_start_loc: torch.Tensor
    query_start_loc_cpu: torch.Tensor
    seq_lens: torch.Tensor
    seq_lens_cpu: torch.Tensor
    max_query_len: int
    max_seq_len: int
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    block_size: int

    @property
    def is_decode_only(self) -> bool:
        return self.max_query_len == 1


class AttentionImpl:
    """Runs attention for one layer. Must not sync with the host or allocate (graph-safe)."""

    def __init__(self, num_heads: int, head_size: int, scale: float, num_kv_heads: int) -> None:
        self.num_heads = num_heads
        self.head_size = head_size
        self.scale = scale
        self.num_kv_heads = num_kv_heads

    def forward(
        self,
        query: torch.Tensor,
        key: torch.Tensor,
        value: torch.Tensor,
        kv_cache: torch.Tensor,
        metadata: Any,
        output: torch.Tensor,
    ) -> None:
        """Write K/V of this step into `kv_cache`, then attend.

        Args:
            query: [T, num_heads, head_size].
            key, value: [T, num_kv_heads, head_size].
            kv_cache: the layer's cache, in the backend's layout (`get_kv_cache_shape`).
            metadata: what this backend's builder returned for the step.
            output: [T, num_heads, head_size], written in place (padding rows may hold anything).
        A backend whose `fuses_qk_rope` says so also takes `qk_rope` (attention/qk_rope.py): query
        and key then come before their norm and rope, which it applies itself.
        """
        raise NotImplementedError

    def fuses_qk_rope(self, metadata: Any, qk_rope: Any) -> bool:
        """Whether `forward` applies this step's q/k norm and rope itself (then passed as qk_rope)."""
        return False


class AttentionMetadataBuilder:
    """Turns `CommonAttentionMetadata` into this backend's metadata (one per engine)."""

    cudagraph_support: ClassVar[CudaGraphSupport] = CudaGraphSupport.NEVER

    def __init__(self, num_heads: int, num_kv_heads: int, head_size: int, block_size: int,
                 max_num_seqs: int, max_model_len: int, device: torch.device) -> None:
        self.num_heads = num_heads
        self.num_kv_heads = num_kv_heads
        self.head_size = head_size
        self.block_size = block_size
        self.max_num_seqs = max_num_seqs
        self.max_model_len = max_model_len
        self.device = device

    def build(self, common: CommonAttentionMetadata) -> Any:
        """Return the metadata the Impl reads this step (may be `common` itself)."""
        return common


class AttentionBackend:
    """Class-level description of a backend; never instantiated."""

    name: ClassVar[str] = ""
    supported_dtypes: ClassVar[tuple[torch.dtype, ...]] = (torch.float16, torch.bfloat16, torch.float32)
    supported_head_sizes: ClassVar[tuple[int, ...] | None] = None  # None: any
    # KV-cache dtypes the backend stores and reads besides the model's own dtype (scale 1.0: K/V are
    # cast when stored and cast back to the query's dtype when loaded). Empty: the model dtype only.
    supported_kv_cache_dtypes: ClassVar[tuple[torch.dtype, ...]] = ()
    default_block_size: ClassVar[int] = 16

    @staticmethod
    def get_impl_cls() -> type[AttentionImpl]:
        raise NotImplementedError

    @staticmethod
    def get_builder_cls() -> type[AttentionMetadataBuilder]:
        return AttentionMetadataBuilder

    @staticmethod
    def get_kv_cache_shape(num_blocks: int, block_size: int, num_kv_heads: int,
                           head_size: int) -> tuple[int, ...]:
        """Default layout: [2 (K, V), num_blocks, block_size, num_kv_heads, head_size]."""
        return (2, num_blocks, block_size, num_kv_heads, head_size)

    @classmethod
    def allocate_kv_cache(cls, num_blocks: int, block_size: int, num_kv_heads: int, head_size: int,
                          dtype: torch.dtype, device: torch.device) -> torch.Tensor:
        """One layer's zeroed cache of `get_kv_cache_shape`. A backend may keep another memory order
        behind that shape (a strided view); everything outside its kernels indexes by the shape."""
        return torch.zeros(cls.get_kv_cache_shape(num_blocks, block_size, num_kv_heads, head_size),
                           dtype=dtype, device=device)

    @classmethod
    def supports_block_size(cls, block_size: int) -> bool:
        return block_size > 0

    @classmethod
    def supports_kv_cache_dtype(cls, kv_cache_dtype: torch.dtype | None, dtype: torch.dtype) -> bool:
        return kv_cache_dtype is None or kv_cache_dtype == dtype or kv_cache_dtype in cls.supported_kv_cache_dtypes

    @classmethod
    def validate(cls, device: torch.device, dtype: torch.dtype, head_size: int,
                 block_size: int | None, kv_cache_dtype: torch.dtype | None = None) -> list[str]:
        """Reasons this backend cannot serve the set-up; empty when it can.

        `block_size=None` means the user left it to the backend (its default is used);
        `kv_cache_dtype=None` means the KV cache is stored in the model's `dtype`.
        """
        reasons = []
        if dtype not in cls.supported_dtypes:
            names = ", ".join(dtype_name(d) for d in cls.supported_dtypes)
            reasons.append(f"dtype {dtype_name(dtype)} is not supported (supported: {names})")
        if not cls.supports_kv_cache_dtype(kv_cache_dtype, dtype):
            names = ", ".join(["the model dtype"] + [dtype_name(d) for d in cls.supported_kv_cache_dtypes])
            reasons.append(f"KV cache dtype {dtype_name(kv_cache_dtype)} is not supported (supported: {names})")
        if cls.supported_head_sizes is not None and head_size not in cls.supported_head_sizes:
            reasons.append(f"head size {head_size} is not supported (supported: {list(cls.supported_head_sizes)})")
        # keep last: subclasses append their block-size rule to reasons[-1]
        if block_size is not None and not cls.supports_block_size(block_size):
            reasons.append(f"block size {block_size} is not supported")
        return reasons


def dtype_name(dtype: torch.dtype) -> str:
    """"bfloat16", "float8_e4m3fn", ... (torch's name without "torch.")."""
    return str(dtype).removeprefix("torch.")
