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
import importlib.metadata
import os

import torch

ENABLED = os.environ.get("ENGINE_PDL", "1") != "0"
MIN_TRITON = (3, 4)   # launch_pdl and tl.extra.cuda.gdc_wait / gdc_launch_dependents


def pdl_enabled(device: torch.device) -> bool:
    """True when kernels on `device` launch with PDL (ENGINE_PDL not 0, a Hopper-or-newer GPU, triton
    >= 3.4)."""
    if not ENABLED or device.type != "cuda":
        return False
    return _cuda_device_has_pdl(device.index)


@functools.cache
def _cuda_device_has_pdl(index: int | None) -> bool:
    """Asked once per device (index None: the current one); every kernel launch goes through here."""
    return (torch.cuda.is_available() and triton_has_pdl(_triton_version())
            and torch.cuda.get_device_capability(index)[0] >= 9)


def _triton_version() -> str | None:
    """The installed triton's version, read without importing triton (`import models` must not)."""
    try:
        return importlib.metadata.version("triton")
    except importlib.metadata.PackageNotFoundError:
        return None


def triton_has_pdl(version: str | None) -> bool:
    """Whether a triton of this version (e.g. "3.6.0", "3.4.0+git1234") has launch_pdl and gdc_*."""
    if version is None:
        return False
    parts = [int(p) for p in version.split("+")[0].split(".")[:2] if p.isdigit()]
    return len(parts) == 2 and tuple(parts) >= MIN_TRITON


def pdl_kwargs(x: torch.Tensor) -> dict:
    """Launch keyword arguments for a kernel with a `USE_PDL` constexpr, given a tensor on its device."""
    return {"USE_PDL": True, "launch_pdl": True} if pdl_enabled(x.device) else {"USE_PDL": False}
