"""`Attention(q, k, v, qk_rope=...)`: the layer hands qk_rope to a backend that fuses it, and applies
it itself (before the backend sees q and k) for one that does not."""
import pytest
import torch

from attention import Attention, QKRope
from attention.backend import AttentionImpl
from attention.forward_context import set_forward_context


class RecordingImpl(AttentionImpl):
    fuses = False

    def fuses_qk_rope(self, metadata, qk_rope) -> bool:
        return self.fuses

    def forward(self, query, key, value, kv_cache, metadata, output, qk_rope=None) -> None:
        self.seen = (query.clone(), key.clone(), qk_rope)
        output.zero_()


@pytest.mark.parametrize("fuses", [False, True])
def test_layer_applies_or_hands_over_qk_rope(fuses):
    layer = Attention(num_heads=2, head_size=4, scale=0.5, num_kv_heads=1, layer_idx=0)
    layer.impl, layer.kv_cache = RecordingImpl(2, 4, 0.5, 1), torch.zeros(1)
    layer.impl.fuses = fuses
    q, k, v = torch.randn(3, 8), torch.randn(3, 4), torch.randn(3, 4)
    calls = []
    qk_rope = QKRope(torch.zeros(3, dtype=torch.int64), torch.zeros(8, 4), None, None, 0.0,
                     lambda q, k: calls.append(1) or (q * 2, k * 3))
    with set_forward_context(object()):
        out = layer(q, k, v, qk_rope=qk_rope)
    seen_q, seen_k, seen_rope = layer.impl.seen
    assert out.shape == (3, 8) and calls == ([] if fuses else [1])
    assert seen_rope is (qk_rope if fuses else None)
    assert torch.equal(seen_q.flatten(1), q if fuses else q * 2) and torch.equal(seen_k.flatten(1), k if fuses else k * 3)
    assert qk_rope.rotary_dim == 4
