"""Linear layers that shard over tensor-parallel ranks (one rank today: `models.layers.ops.linear`, which
is F.linear, or the Triton skinny GEMM where it wins).

Every parameter carries `weight_loader(param, loaded_weight, shard_id=None)`, which copies the full
Hugging Face tensor's slice for this rank into the parameter (or into its part of a fused parameter).
Weights are [out_features, in_features] like `nn.Linear`.
"""
from __future__ import annotations

import torch
from torch import nn

from models.layers.ops import linear, linear_silu_and_mul
from models.layers.tp import (attach_weight_loader, copy_into, divide, get_tp_rank, get_tp_size,
                              take_shard)


class _LinearBase(nn.Module):
    """Holds weight [out_per_rank, in_per_rank] and optional bias [out_per_rank]; no init (loaded later)."""

    def __init__(self, in_per_rank: int, out_per_rank: int, bias: bool) -> None:
        super().__init__()
        self.in_per_rank = in_per_rank
        self.out_per_rank = out_per_rank
        self.weight = nn.Parameter(torch.empty(out_per_rank, in_per_rank), requires_grad=False)
        attach_weight_loader(self.weight, self)
        if bias:
            self.bias = nn.Parameter(torch.empty(out_per_rank), requires_grad=False)
            attach_weight_loader(self.bias, self)
        else:
            self.register_parameter("bias", None)

    def weight_loader(self, param: nn.Parameter, loaded_weight: torch.Tensor, shard_id=None) -> None:
        raise NotImplementedError

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x: [T, in_per_rank] -> [T, out_per_rank], same dtype (Triton at small T on CUDA, else cuBLAS)."""
        return linear(x, self.weight, self._bias())

    def _bias(self) -> torch.Tensor | None:
        return self.bias


class ColumnParallelLinear(_LinearBase):
    """Output features split over ranks; each rank returns its slice (no gather)."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__(input_size, divide(output_size, get_tp_size(), "output_size"), bias)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        """loaded_weight: the full [output_size(, input_size)] tensor; this rank's rows are copied."""
        rows = param.shape[0]
        copy_into(param.data, take_shard(loaded_weight, 0, get_tp_rank(), rows, get_tp_size()))


class MergedColumnParallelLinear(ColumnParallelLinear):
    """Several column-parallel outputs fused in one matmul (e.g. gate_proj and up_proj).

    shard_id is the index into `output_sizes` of the checkpoint tensor being loaded.
    """

    def __init__(self, input_size: int, output_sizes: list[int], bias: bool = False) -> None:
        self.output_sizes = list(output_sizes)
        super().__init__(input_size, sum(output_sizes), bias)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id is None:
            return super().weight_loader(param, loaded_weight)
        if not 0 <= shard_id < len(self.output_sizes):
            raise ValueError(f"shard_id must be in [0, {len(self.output_sizes)}), got {shard_id}")
        tp_size = get_tp_size()
        offset = sum(self.output_sizes[:shard_id]) // tp_size
        rows = self.output_sizes[shard_id] // tp_size
        source = take_shard(loaded_weight, 0, get_tp_rank(), rows, tp_size)
        copy_into(param.data.narrow(0, offset, rows), source)

    def forward_silu_and_mul(self, x: torch.Tensor) -> torch.Tensor:
        """For a [gate | up] pair: x [T, in] -> silu(gate) * up [T, out_per_rank // 2], same dtype;
        one launch at small T on CUDA (the skinny GEMM applies SiLU-and-mul to its output)."""
        if len(self.output_sizes) != 2 or self.output_sizes[0] != self.output_sizes[1]:
            raise ValueError(f"forward_silu_and_mul needs two equal outputs, got {self.output_sizes}")
        return linear_silu_and_mul(x, self.weight, self._bias())


class QKVParallelLinear(ColumnParallelLinear):
    """q, k and v projections fused: output is [q (H*D) | k (Hkv*D) | v (Hkv*D)] for this rank's heads.

    shard_id is "q", "k" or "v". KV heads are replicated when there are fewer than ranks.
    """

    def __init__(self, hidden_size: int, head_size: int, total_num_heads: int, total_num_kv_heads: int,
                 bias: bool = False) -> None:
        tp_size = get_tp_size()
        self.head_size = head_size
        self.num_heads = divide(total_num_heads, tp_size, "num_attention_heads")
        self.num_kv_heads = max(1, total_num_kv_heads // tp_size)
        self.num_kv_head_replicas = max(1, tp_size // total_num_kv_heads)
        out_total = (self.num_heads + 2 * self.num_kv_heads) * head_size * tp_size
        super().__init__(hidden_size, out_total, bias)

    def output_split(self) -> tuple[int, int, int]:
        """Widths of q, k, v in this rank's output."""
        kv = self.num_kv_heads * self.head_size
        return self.num_heads * self.head_size, kv, kv

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        if shard_id is None:
            raise ValueError("QKVParallelLinear loads q, k and v separately: shard_id must be 'q', 'k' or 'v'")
        q, kv, _ = self.output_split()
        if shard_id == "q":
            offset, rows, rank, num_slices = 0, q, get_tp_rank(), get_tp_size()
        elif shard_id in ("k", "v"):
            offset = q if shard_id == "k" else q + kv
            rows, rank = kv, get_tp_rank() // self.num_kv_head_replicas
            num_slices = get_tp_size() // self.num_kv_head_replicas
        else:
            raise ValueError(f"shard_id must be 'q', 'k' or 'v', got {shard_id!r}")
        copy_into(param.data.narrow(0, offset, rows), take_shard(loaded_weight, 0, rank, rows, num_slices))


class RowParallelLinear(_LinearBase):
    """Input features split over ranks; partial outputs are summed across ranks (an all-reduce with
    more than one rank, to be added with tensor parallelism). The bias is added once, in full."""

    def __init__(self, input_size: int, output_size: int, bias: bool = False) -> None:
        super().__init__(divide(input_size, get_tp_size(), "input_size"), output_size, bias)

    def weight_loader(self, param, loaded_weight, shard_id=None) -> None:
        """Weights: this rank's input columns; bias: copied whole."""
        if param.dim() == 1:
            copy_into(param.data, loaded_weight)
            return
        cols = param.shape[1]
        copy_into(param.data, take_shard(loaded_weight, 1, get_tp_rank(), cols, get_tp_size()))

    def _bias(self) -> torch.Tensor | None:
        """The bias is added on rank 0 only (the partial outputs are summed across ranks)."""
        return self.bias if get_tp_rank() == 0 else None
