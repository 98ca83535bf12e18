"""Fused Triton kernels for the decoder's hot path: RMSNorm (+ residual add), q/k norm + rope, SiLU-and-mul,
and the projections' GEMMs at decode batch sizes (skinny_gemm up to 16 rows, tile_gemm up to 256).

Each op is one kernel launch with float32 math, safe inside CUDA-graph capture (no host sync, no
data-dependent Python branching). The dispatch functions here (`apply_rms_norm`, `apply_silu_and_mul`,
`linear`) pick a kernel or the torch path; the rest use
`use_fused(x)` / `load(name)`. (No function here may share a kernel module's name: importing
`models.layers.ops.rms_norm` sets this package's attribute `rms_norm` to the module.)

- kernel modules are imported on first use only, so `import models` does not import triton, and tests
  can set TRITON_INTERPRET=1 before the kernels are defined;
- ENGINE_FUSED_OPS=0 (read at import) keeps the plain torch path on CUDA too, for A/B measurements;
  ENGINE_SKINNY_GEMM=0 keeps cuBLAS for the projections at every batch size;
- ENGINE_SKINNY_MIN_NUMEL (weight elements; default: every weight with PDL, 16M without) is the
  smallest weight the skinny GEMM takes;
- ENGINE_SKINNY_SILU=0 keeps SiLU-and-mul a kernel of its own after a skinny gate_up projection
  (by default the skinny GEMM applies it to its output: one launch less per layer).
"""
from __future__ import annotations

import functools
import importlib
import importlib.util
import os
from types import ModuleType

import torch
import torch.nn.functional as F

from models.layers.ops.pdl import pdl_enabled

HAS_TRITON = importlib.util.find_spec("triton") is not None
ENABLED = os.environ.get("ENGINE_FUSED_OPS", "1") != "0"
SKINNY_ENABLED = os.environ.get("ENGINE_SKINNY_GEMM", "1") != "0"
SKINNY_SILU_ENABLED = os.environ.get("ENGINE_SKINNY_SILU", "1") != "0"
# H100 (engine/bench/skinny_gemm.py): the kernel's lead over cuBLAS holds to M = 16;
# ENGINE_SKINNY_MAX_ROWS (up to the kernel's 64) moves the limit, for A/B measurements.
SKINNY_MAX_ROWS = int(os.environ.get("ENGINE_SKINNY_MAX_ROWS", "16"))
# Smallest weight (elements) for the skinny GEMM; None: every weight with PDL (H100, Qwen3-0.6B batch-1
# latency 1.47-1.55 -> 1.29 ms/token), else 16M (32 MB of bf16: below it cuBLAS was as fast without PDL).
_MIN_NUMEL_ENV = os.environ.get("ENGINE_SKINNY_MIN_NUMEL")
SKINNY_MIN_WEIGHT_NUMEL = int(_MIN_NUMEL_ENV) if _MIN_NUMEL_ENV is not None else None
SKINNY_MIN_NUMEL_WITHOUT_PDL = 16 << 20
# The tile GEMM takes the projections of SKINNY_MAX_ROWS < M <= TILE_MAX_ROWS rows where its device's
# table says it beats cuBLAS (tile_gemm.winning_config; H100, 2026-11-26: Qwen3-0.6B throughput 19,340 ->
# 19,897 tok/s). ENGINE_TILE_GEMM_MAX_ROWS moves the limit (0: never), for A/B measurements.
TILE_MAX_ROWS = int(os.environ.get("ENGINE_TILE_GEMM_MAX_ROWS", "256"))
KERNEL_MODULES = ("rms_norm", "qk_norm_rope", "silu_and_mul", "skinny_gemm", "tile_gemm")


def use_fused(x: torch.Tensor) -> bool:
    """True when `x` should go through the Triton kernels (a CUDA tensor, triton present, not disabled)."""
    return x.is_cuda and HAS_TRITON and ENABLED


def _skinny_fits(x: torch.Tensor, weight: torch.Tensor, min_numel: int) -> bool:
    return (use_fused(x) and SKINNY_ENABLED and x.dim() == 2 and x.shape[0] <= SKINNY_MAX_ROWS
            and weight.numel() >= min_numel)


def use_skinny(x: torch.Tensor, weight: torch.Tensor) -> bool:
    """True when x [M, K] @ weight[N, K]^T should use the Triton skinny GEMM (CUDA, M small, and with
    PDL any weight, without it a big one)."""
    min_numel = SKINNY_MIN_WEIGHT_NUMEL
    if min_numel is None:
        min_numel = 0 if x.is_cuda and pdl_enabled(x.device) else SKINNY_MIN_NUMEL_WITHOUT_PDL
    return _skinny_fits(x, weight, min_numel)


def tile_config(x: torch.Tensor, weight: torch.Tensor, silu: bool = False) -> dict | None:
    """The Triton tile GEMM's config when x [M, K] @ weight^T should use it, else None: CUDA, M above
    the skinny GEMM's rows and at most TILE_MAX_ROWS (a decode batch; prefill's thousands of rows stay
    with cuBLAS), and a shape where the sweep did not find cuBLAS faster."""
    if use_fused(x) and x.dim() == 2 and SKINNY_MAX_ROWS < x.shape[0] <= TILE_MAX_ROWS:
        return load("tile_gemm").winning_config(x, weight, silu)
    return None


def linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """F.linear (x [M, K], weight [N, K] -> [M, N]), through the skinny GEMM where `use_skinny` says so
    and the tile GEMM where `tile_config` gives a config."""
    if use_skinny(x, weight):
        return load("skinny_gemm").skinny_gemm(x, weight, bias)
    if (cfg := tile_config(x, weight)) is not None:
        return load("tile_gemm").tile_gemm(x, weight, bias, config=cfg)
    return F.linear(x, weight, bias)


def linear_silu_and_mul(x: torch.Tensor, gate_up: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
    """silu(gate) * up of the merged projection x [M, K] @ gate_up [2I, K]^T (+ bias [2I]) -> [M, I]:
    one skinny or tile GEMM launch where `use_skinny` or `tile_config` says so, else `linear` then
    `apply_silu_and_mul`."""
    if SKINNY_SILU_ENABLED and use_skinny(x, gate_up):
        return load("skinny_gemm").skinny_gemm(x, gate_up, bias, silu=True)
    if SKINNY_SILU_ENABLED and (cfg := tile_config(x, gate_up, silu=True)) is not None:
        return load("tile_gemm").tile_gemm(x, gate_up, bias, config=cfg, silu=True)
    return apply_silu_and_mul(linear(x, gate_up, bias))


def apply_rms_norm(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """x [..., H], residual like x or None, weight [H] -> x * rsqrt(mean(x^2) + eps) * weight; with a
    residual, x + residual is normalised instead and (normalised, x + residual) returned. New tensors
    in x's dtype, float32 math; the Triton kernel where `use_fused(x)`, else `rms_norm_native`."""
    if not use_fused(x):
        return rms_norm_native(x, residual, weight, eps)
    kernels = load("rms_norm")
    if residual is None:
        return kernels.rms_norm(x, weight, eps)
    return kernels.fused_add_rms_norm(x, residual, weight, eps)


def rms_norm_native(x: torch.Tensor, residual: torch.Tensor | None, weight: torch.Tensor, eps: float):
    """The torch path of `apply_rms_norm` (the CPU's, and the reference for the kernels). The norm uses the
    float32 sum x + residual; the returned residual is that sum rounded to x's dtype."""
    dtype = x.dtype
    xf = x.float()
    if residual is not None:
        xf = xf + residual.float()
        residual = xf.to(dtype)
    variance = xf.pow(2).mean(dim=-1, keepdim=True)
    out = (xf * torch.rsqrt(variance + eps) * weight.float()).to(dtype)
    return out if residual is None else (out, residual)


def apply_silu_and_mul(x: torch.Tensor) -> torch.Tensor:
    """x [T, 2 * I] laid out [gate | up] -> silu(gate) * up [T, I], x's dtype (Triton where `use_fused`)."""
    if use_fused(x):
        return load("silu_and_mul").silu_and_mul(x)
    return silu_and_mul_native(x)


def silu_and_mul_native(x: torch.Tensor) -> torch.Tensor:
    """The torch path of `apply_silu_and_mul` (the CPU's, and the reference for the kernels)."""
    gate, up = x.chunk(2, dim=-1)
    return F.silu(gate) * up


@functools.cache
def load(name: str) -> ModuleType:
    """The kernel module `models.layers.ops.<name>`, imported once (this imports triton)."""
    if name not in KERNEL_MODULES:
        raise ValueError(f"kernel module must be one of {KERNEL_MODULES}, got {name!r}")
    return importlib.import_module(f"models.layers.ops.{name}")


def num_warps_for(num_elements: int, elements_per_warp: int = 256, max_warps: int = 8) -> int:
    """Warps for a program that handles `num_elements` (a power of two): 1 .. max_warps."""
    return max(1, min(max_warps, num_elements // elements_per_warp))
