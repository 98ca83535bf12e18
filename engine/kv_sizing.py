"""How many KV blocks the cache gets.

CUDA: after a profiling forward at the largest batch, the blocks fill `gpu_memory_utilization` of the
card minus what is already used (weights, other processes, the activation peak). CPU: `cpu_kv_cache_gib`,
capped at what `max_num_seqs` full-length requests could ever use. `num_kv_blocks` overrides both.
"""
from __future__ import annotations

import torch

from engine.config import EngineConfig, ModelConfig


def bytes_per_block(model_config: ModelConfig, block_size: int, dtype: torch.dtype) -> int:
    """K and V of `block_size` tokens for every layer, stored in `dtype` (the KV-cache dtype: 1 byte
    per element for fp8, so twice the blocks of bfloat16 in the same memory)."""
    elem = torch.empty((), dtype=dtype).element_size()
    return 2 * model_config.num_layers * block_size * model_config.num_kv_heads * model_config.head_size * elem


def max_useful_blocks(config: EngineConfig, block_size: int, max_model_len: int) -> int:
    return config.max_num_seqs * -(-max_model_len // block_size)


def num_blocks_cpu(config: EngineConfig, block_bytes: int, block_size: int, max_model_len: int) -> tuple[int, str]:
    """Returns (blocks, explanation)."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks, "num_kv_blocks given"
    by_memory = int(config.cpu_kv_cache_gib * 2**30) // block_bytes
    num_blocks = max(1, min(by_memory, max_useful_blocks(config, block_size, max_model_len)))
    return num_blocks, f"cpu_kv_cache_gib={config.cpu_kv_cache_gib}"


def num_blocks_cuda(config: EngineConfig, block_bytes: int, device: torch.device) -> tuple[int, str]:
    """Call after the profiling forward (with peak stats reset before it). Returns (blocks, explanation)."""
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks, "num_kv_blocks given"
    free, total = torch.cuda.mem_get_info(device)
    peak_extra = torch.cuda.max_memory_allocated(device) - torch.cuda.memory_allocated(device)
    budget = total * config.gpu_memory_utilization - (total - free) - peak_extra
    num_blocks = int(budget // block_bytes)
    why = (f"{config.gpu_memory_utilization:.2f} of {total / 2**30:.1f} GiB, {(total - free) / 2**30:.2f} GiB in use, "
           f"activation peak {peak_extra / 2**30:.2f} GiB")
    return num_blocks, why
