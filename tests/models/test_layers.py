"""Layer building blocks vs transformers / float64 math."""
from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from models.layers import MergedColumnParallelLinear, QKVParallelLinear, RMSNorm, RowParallelLinear, get_rope
from models.layers.rotary import rope_parameters
from models.presets import get_preset
from tests.models.helpers import assert_rope_matches_transformers


@pytest.mark.parametrize("preset", ["tiny-llama", "llama-3.1-8b", "qwen3-8b"])
def test_rope_matches_transformers(preset):
    config = get_preset(preset)
    assert_rope_matches_transformers(config, min(config.max_position_embeddings, 100_000))


def test_rope_reads_old_style_config():
    new = get_preset("llama-3.1-8b")
    scaling = {k: v for k, v in new.rope_parameters.items() if k not in ("rope_theta", "rope_type")}
    old = SimpleNamespace(rope_theta=500000.0, rope_scaling={"type": "llama3", **scaling},
                          max_position_embeddings=4096)
    assert rope_parameters(old) == rope_parameters(new)
    plain = SimpleNamespace(rope_theta=1234.0, rope_scaling=None, max_position_embeddings=16)
    assert rope_parameters(plain) == {"rope_type": "default", "rope_theta": 1234.0}
    with pytest.raises(ValueError, match="rope_type"):
        rope_parameters(SimpleNamespace(rope_scaling={"rope_type": "dynamic", "factor": 4.0}))


def test_rope_bfloat16_keeps_float32_cache():
    config = get_preset("tiny-qwen3")
    rope = get_rope(config, config.head_dim)
    q = torch.randn(3, 4 * config.head_dim, dtype=torch.bfloat16)
    k = torch.randn(3, 2 * config.head_dim, dtype=torch.bfloat16)
    positions = torch.tensor([0, 5, 2047])
    out_q, out_k = rope(positions, q, k)
    assert out_q.dtype == torch.bfloat16 and out_k.dtype == torch.bfloat16
    ref_q, _ = rope(positions, q.float(), k.float())
    torch.testing.assert_close(out_q.float(), ref_q, rtol=1e-2, atol=1e-2)


def test_rmsnorm_with_and_without_residual():
    gen = torch.Generator().manual_seed(1)
    x, residual = torch.randn(5, 32, generator=gen), torch.randn(5, 32, generator=gen)
    norm = RMSNorm(32, eps=1e-6)
    with torch.no_grad():
        norm.weight.copy_(torch.randn(32, generator=gen))
    def ref(v):
        v = v.double()
        return (v / torch.sqrt(v.pow(2).mean(-1, keepdim=True) + 1e-6) * norm.weight.double()).float()
    torch.testing.assert_close(norm(x), ref(x))
    out, new_residual = norm(x, residual)
    torch.testing.assert_close(new_residual, x + residual)
    torch.testing.assert_close(out, ref(x + residual))


def test_fused_loaders_place_shards():
    gen = torch.Generator().manual_seed(2)
    q_w, k_w, v_w = (torch.randn(n, 8, generator=gen) for n in (12, 6, 6))
    qkv = QKVParallelLinear(8, 3, total_num_heads=4, total_num_kv_heads=2, bias=False)
    for shard, w in zip("qkv", (q_w, k_w, v_w)):
        qkv.weight.weight_loader(qkv.weight, w, shard)
    torch.testing.assert_close(qkv.weight.data, torch.cat([q_w, k_w, v_w]), rtol=0, atol=0)
    with pytest.raises(ValueError, match="shard_id"):
        qkv.weight.weight_loader(qkv.weight, q_w, "x")
    with pytest.raises(ValueError, match=r"\(7, 8\)"):
        qkv.weight.weight_loader(qkv.weight, torch.zeros(7, 8), "k")

    gate, up = torch.randn(5, 8, generator=gen), torch.randn(5, 8, generator=gen)
    gate_up = MergedColumnParallelLinear(8, [5, 5])
    gate_up.weight.weight_loader(gate_up.weight, up, 1)
    gate_up.weight.weight_loader(gate_up.weight, gate, 0)
    torch.testing.assert_close(gate_up.weight.data, torch.cat([gate, up]), rtol=0, atol=0)

    row = RowParallelLinear(8, 4, bias=True)
    w, b = torch.randn(4, 8, generator=gen), torch.randn(4, generator=gen)
    row.weight.weight_loader(row.weight, w)
    row.bias.weight_loader(row.bias, b)
    x = torch.randn(3, 8, generator=gen)
    torch.testing.assert_close(row(x), x @ w.T + b)
