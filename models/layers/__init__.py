"""Model building blocks, ready for tensor parallelism (one rank today)."""
from models.layers.activation import SiluAndMul
from models.layers.embedding import ParallelLMHead, VocabParallelEmbedding
from models.layers.linear import (ColumnParallelLinear, MergedColumnParallelLinear, QKVParallelLinear,
                                  RowParallelLinear)
from models.layers.norm import RMSNorm
from models.layers.rotary import RotaryEmbedding, get_rope

__all__ = ["SiluAndMul", "ParallelLMHead", "VocabParallelEmbedding", "ColumnParallelLinear",
           "MergedColumnParallelLinear", "QKVParallelLinear", "RowParallelLinear", "RMSNorm",
           "RotaryEmbedding", "get_rope"]
