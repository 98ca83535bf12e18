"""`torch_ref`: the oracle backend. Gathers each request's blocks, then plain attention.

Runs on CPU and GPU, any dtype, head size and block size; it loops over requests on the host, so it
is never captured in a CUDA graph. Every other backend is tested against it. The KV cache may be
float8_e4m3fn (`kv_cache_dtype="fp8"`, scale 1.0): K/V are cast when stored (torch's cast rounds to
nearest; e4m3 holds +-448 at most) and read back into float32 for the math.
"""
from __future__ import annotations

import torch

from attention.backend import AttentionBackend, AttentionImpl, CommonAttentionMetadata


def store_kv(key: torch.Tensor, value: torch.Tensor, kv_cache: torch.Tensor,
             slot_mapping: torch.Tensor) -> None:
    """Write key/value [T, Hkv, D] into kv_cache [2, num_blocks, block_size, Hkv, D] at
    slot_mapping [T] int64, cast to the cache's dtype; slots < 0 (padding) are skipped."""
    num_kv_heads, head_size = key.shape[1], key.shape[2]
    valid = slot_mapping >= 0
    slots = slot_mapping[valid]
    kv_cache[0].view(-1, num_kv_heads, head_size)[slots] = key[valid].to(kv_cache.dtype)
    kv_cache[1].view(-1, num_kv_heads, head_size)[slots] = value[valid].to(kv_cache.dtype)


def gather_kv(kv_cache: torch.Tensor, block_ids: torch.Tensor, seq_len: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The first seq_len tokens of one request: two [seq_len, Hkv, D] tensors."""
    keys = kv_cache[0, block_ids].flatten(0, 1)[:seq_len]
    values = kv_cache[1, block_ids].flatten(0, 1)[:seq_len]
    return keys, values


def attend(query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scale: float) -> torch.Tensor:
    """Causal attention of query [Q, H, D] (the last Q positions) over keys/values [S, Hkv, D].

    Query i sits at position S - Q + i and sees keys 0..S - Q + i. Math in float32; returns [Q, H, D].
    """
    q_len, num_heads, _ = query.shape
    seq_len, num_kv_heads, _ = keys.shape
    group = num_heads // num_kv_heads
    q = query.float().transpose(0, 1)                                     # [H, Q, D]
    k = keys.float().repeat_interleave(group, dim=1).transpose(0, 1)      # [H, S, D]
    v = values.float().repeat_interleave(group, dim=1).transpose(0, 1)
    scores = torch.matmul(q, k.transpose(1, 2)) * scale                  # [H, Q, S]
    q_pos = torch.arange(seq_len - q_len, seq_len, device=query.device)[:, None]
    k_pos = torch.arange(seq_len, device=query.device)[None, :]
    scores.masked_fill_(k_pos > q_pos, float("-inf"))
    probs = torch.softmax(scores, dim=-1)
    return torch.matmul(probs, v).transpose(0, 1)                         # [Q, H, D]


class TorchRefImpl(AttentionImpl):
    def forward(self, query, key, value, kv_cache, metadata: CommonAttentionMetadata, output) -> None:
        store_kv(key, value, kv_cache, metadata.slot_mapping)
        starts = metadata.query_start_loc_cpu.tolist()
        seq_lens = metadata.seq_lens_cpu.tolist()
        block_size = kv_cache.shape[2]
        for r in range(metadata.num_reqs):
            start, end, seq_len = starts[r], starts[r + 1], seq_lens[r]
            num_blocks = -(-seq_len // block_size)
            keys, values = gather_kv(kv_cache, metadata.block_table[r, :num_blocks].long(), seq_len)
            output[start:end] = attend(query[start:end], keys, values, self.scale).to(output.dtype)


class TorchRefBackend(AttentionBackend):
    name = "torch_ref"
    supported_kv_cache_dtypes = (torch.float8_e4m3fn,)

    @staticmethod
    def get_impl_cls():
        return TorchRefImpl
