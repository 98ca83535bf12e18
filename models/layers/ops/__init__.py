"""Fused Triton kernels for the decoder's hot path: RMSNorm (+ residual add), q/k norm + rope, SiLU-and-mul,
and the projections' GEMM at small batch (skinny_gemm).

Each op is one kernel launch with float32 math, safe inside CUDA-graph capture (no host sync, no
data-dependent Python branching). The layers call them through `use_fused(x)` / `load(name)`:

- kernel modules are imported on first use only, so `import models` does not import triton, and tests
  can set TRITON_INTERPRET=1 before the kernels are defined;
- ENGINE_FUSED_OPS=0 (read at import) keeps the plain torch path on CUDA too, for A/B measurements;
  ENGINE_SKINNY_GEMM=0 keeps cuBLAS for the projections at every batch size.
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch
import torch.nn.functional as F

HAS_TRITON = importlib.util.find_spec("triton") is not None
ENABLED = os.environ.get("ENGINE_FUSED_OPS", "1") != "0"
SKINNY_ENABLED = os.environ.get("ENGINE_SKINNY_GEMM", "1") != "0"
SKINNY_MAX_ROWS = 16                # H100 (engine/bench/skinny_gemm.py): the kernel's lead holds to M = 16
SKINNY_MIN_WEIGHT_NUMEL = 16 << 20  # and only on weights of 32 MB (bf16) and more
KERNEL_MODULES = ("rms_norm", "qk_norm_rope", "silu_and_mul", "skinny_gemm")


def use_fused(x: torch.Tensor) -> bool:
    """True when `x` should go through the Triton kernels (a CUDA tensor, triton present, not disabled)."""
    return x.is_cuda and HAS_TRITON and ENABLED


def use_skinny(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when x [M, K] @ weight[N, K]^T should use the Triton skinny GEMM (CUDA, M small, big weight)."""
    return (use_fused(x) and SKINNY_ENABLED and x.shape[0] <= SKINNY_MAX_ROWS
            and weight.numel() >= SKINNY_MIN_WEIGHT_NUMEL)


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear (x [M, K], weight [N, K] -> [M, N]), through the skinny GEMM where `use_skinny` says so."""
    if use_skinny(x, weight):
        return load("skinny_gemm").skinny_gemm(x, weight, bias)
    return F.linear(x, weight, bias)


@functools.cache
def load(name: str) -> ModuleType:
    """The kernel module `models.layers.ops.<name>`, imported once (this imports triton)."""
    if name not in KERNEL_MODULES:
        raise ValueError(f"kernel module must be one of {KERNEL_MODULES}, got {name!r}")
    return importlib.import_module(f"models.layers.ops.{name}")


def num_warps_for(num_elements: int, elements_per_warp: int = 256, max_warps: int = 8) -> int:
    """Warps for a program that handles `num_elements` (a power of two): 1 .. max_warps."""
    return max(1, min(max_warps, num_elements // elements_per_warp))
