"""Choosing the attention backend once at start-up.

Priority per platform: CUDA tries triton, flash_attn, torch_ref (triton first: on the H100 it was
as fast or faster than flash_attn on every benchmark of docs/benchmarks.md, and its 16-token blocks
share prefixes more finely); CPU has torch_ref only. The first
backend whose `validate` returns no reason wins. `attention_backend=` (flag `--attention-backend`) or
the environment variable `ENGINE_ATTENTION_BACKEND` names one explicitly; an unknown name, or one that
cannot serve the set-up, is an error listing the reasons and the backends that can. The KV-cache
dtype is part of the set-up: flash_attn (FA2) stores only the model dtype, so an fp8 KV cache skips
it (the reason is logged with the choice).
"""
from __future__ import annotations

import importlib
import logging
import os
from dataclasses import dataclass

import torch

from attention.backend import AttentionBackend

logger = logging.getLogger(__name__)

ENV_VAR = "ENGINE_ATTENTION_BACKEND"

# name -> "module:Class", imported lazily so that a missing optional package only disables its backend.
REGISTRY: dict[str, str] = {
    "flash_attn": "attention.backends.flash_attn:FlashAttnBackend",
    "triton": "attention.backends.triton_attn:TritonAttnBackend",
    "torch_ref": "attention.backends.torch_ref:TorchRefBackend",
}
PRIORITY = {"cuda": ["triton", "flash_attn", "torch_ref"], "cpu": ["torch_ref"]}


@dataclass(frozen=True)
class BackendChoice:
    backend: type[AttentionBackend]
    block_size: int
    reason: str


def load_backend(name: str) -> type[AttentionBackend]:
    if name not in REGISTRY:
        raise ValueError(f"unknown attention backend {name!r}; known backends: {', '.join(REGISTRY)}")
    module_name, cls_name = REGISTRY[name].split(":")
    return getattr(importlib.import_module(module_name), cls_name)


def reasons_against(name: str, device: torch.device, dtype: torch.dtype, head_size: int,
                    block_size: int | None, kv_cache_dtype: torch.dtype | None = None) -> list[str]:
    """Why backend `name` cannot serve this set-up (empty: it can). Import failures count as reasons.
    `kv_cache_dtype` None (or equal to `dtype`) means the cache is stored in the model dtype."""
    try:
        backend = load_backend(name)
    except ImportError as e:
        return [f"cannot be imported ({e})"]
    if device.type not in PRIORITY or name not in PRIORITY[device.type]:
        return [f"does not run on {device.type}"]
    return backend.validate(device, dtype, head_size, block_size, kv_cache_dtype)


def select_backend(device: torch.device, dtype: torch.dtype, head_size: int,
                   block_size: int | None = None, requested: str | None = None,
                   kv_cache_dtype: torch.dtype | None = None) -> BackendChoice:
    """Pick the backend for the run and the block size it will use."""
    setup = (device, dtype, head_size, block_size, kv_cache_dtype)
    requested = requested or os.environ.get(ENV_VAR) or None
    candidates = PRIORITY.get(device.type, ["torch_ref"])
    if requested is not None:
        if requested not in REGISTRY:
            raise ValueError(f"unknown attention backend {requested!r}; known backends: {', '.join(REGISTRY)}")
        reasons = reasons_against(requested, *setup)
        if reasons:
            fit = [n for n in candidates if not reasons_against(n, *setup)]
            raise ValueError(f"attention backend {requested!r} cannot serve this set-up: {'; '.join(reasons)}. "
                             f"Backends that can: {', '.join(fit) or 'none'}")
        return _choice(requested, block_size, "requested explicitly")
    rejected = []
    for name in candidates:
        reasons = reasons_against(name, *setup)
        if not reasons:
            why = "highest priority for " + device.type
            if rejected:
                why += " that fits (" + "; ".join(rejected) + ")"
            return _choice(name, block_size, why)
        rejected.append(f"{name}: {', '.join(reasons)}")
    raise ValueError("no attention backend can serve this set-up: " + "; ".join(rejected))


def _choice(name: str, block_size: int | None, reason: str) -> BackendChoice:
    backend = load_backend(name)
    chosen = block_size if block_size is not None else backend.default_block_size
    return BackendChoice(backend=backend, block_size=chosen, reason=reason)
