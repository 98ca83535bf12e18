"""Programmatic dependent launch (PDL, Hopper and newer): let a kernel start while the one before it
in the stream is still finishing, so its launch and set-up (for a GEMM: pulling its first weight
tiles into L2) overlap the previous kernel's tail. CUDA-graph capture keeps these edges.

A kernel that takes `USE_PDL: tl.constexpr` follows one rule: with USE_PDL it calls
`tl.extra.cuda.gdc_launch_dependents()` (the next kernel may be scheduled now) and
`tl.extra.cuda.gdc_wait()` (blocks until the previous kernel has finished and its writes are
visible) before it reads or writes any activation; only weights, which no kernel writes, may be
read before the wait. Kernels without PDL are ordered as usual.

H100, batch-1 chain of norm + projection kernels in a CUDA graph (2026-11-25): Qwen3-8B shapes
146.0 -> 138.8 us per layer, Qwen3-0.6B 34.2 -> 26.5 us (cuBLAS 28.7). ENGINE_PDL=0 turns it off.
"""
from __future__ import annotations

import functools
import os

import torch

ENABLED = os.environ.get("ENGINE_PDL", "1") != "0"


@functools.cache
def _device_supports(index: int) -> bool:
    return torch.cuda.get_device_capability(index)[0] >= 9


def pdl_enabled(device: torch.device) -> bool:
    """True when kernels on `device` launch with PDL (a Hopper-or-newer GPU, ENGINE_PDL not 0)."""
    return ENABLED and device.type == "cuda" and torch.cuda.is_available() and _device_supports(
        device.index if device.index is not None else torch.cuda.current_device())


def pdl_kwargs(x: torch.Tensor) -> dict:
    """Launch keyword arguments for a kernel with a `USE_PDL` constexpr, given a tensor on its device."""
    return {"USE_PDL": True, "launch_pdl": True} if pdl_enabled(x.device) else {"USE_PDL": False}
