"""Tensor-parallel rank and size seen by the layers.

The engine runs on one device today, so rank 0 of 1. The layers already shard their parameters by
these numbers, so adding tensor parallelism later means changing this file (and adding the
collectives marked in `linear.py` / `embedding.py`), not the model code.
"""
from __future__ import annotations

import weakref


def get_tp_rank() -> int:
    """This process's tensor-parallel rank."""
    return 0


def get_tp_size() -> int:
    """Number of tensor-parallel ranks."""
    return 1


def divide(numerator: int, denominator: int, what: str) -> int:
    """numerator / denominator, or a ValueError naming `what` when it does not divide evenly."""
    if numerator % denominator:
        raise ValueError(f"{what} ({numerator}) must be divisible by the tensor-parallel size ({denominator})")
    return numerator // denominator


def copy_into(target, loaded) -> None:
    """Copy a checkpoint tensor into a parameter slice, converting dtype and device; shapes must match."""
    if tuple(target.shape) != tuple(loaded.shape):
        raise ValueError(f"checkpoint shape {tuple(loaded.shape)} does not fit parameter slice "
                         f"shape {tuple(target.shape)}")
    target.copy_(loaded)


def take_shard(loaded, dim: int, index: int, length: int, num_slices: int):
    """Slice `index` of size `length` along `dim` of a full checkpoint tensor made of exactly
    `num_slices` such slices; ValueError when the checkpoint's size does not match."""
    if loaded.dim() <= dim or loaded.shape[dim] != length * num_slices:
        raise ValueError(f"checkpoint shape {tuple(loaded.shape)} does not match: expected "
                         f"{length * num_slices} along dim {dim}")
    return loaded.narrow(dim, index * length, length)


def attach_weight_loader(param, module, method_name: str = "weight_loader") -> None:
    """Set `param.weight_loader(param, loaded_weight, shard_id=None)` to call `module.<method_name>`.

    Holds the module weakly: a bound method on the parameter would make a module <-> parameter
    cycle, and a deleted model's GPU memory would wait for the garbage collector.
    """
    module_ref = weakref.ref(module)

    def weight_loader(p, loaded_weight, shard_id=None):
        return getattr(module_ref(), method_name)(p, loaded_weight, shard_id)

    param.weight_loader = weight_loader
