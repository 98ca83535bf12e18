"""Fused Triton ops (models/layers/ops) vs the layers' torch paths and float64 math.

Without a GPU the kernels run in Triton's interpreter on CPU tensors: TRITON_INTERPRET must be set
before the kernels are defined. The kernel modules are imported lazily (models.layers.ops.load), so
setting it here, before the first `load`, is enough and leaves other test modules alone.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from models.layers import RMSNorm, SiluAndMul  # noqa: E402
from models.layers import ops, rotary  # noqa: E402
from models.layers.ops import load  # noqa: E402
from models.layers.rotary import RotaryEmbedding  # noqa: E402
from models.presets import _LLAMA31_ROPE  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
# Triton's interpreter truncates float32 -> bfloat16 (the GPU rounds to nearest even): 1 ulp apart.
INTERPRETED = os.environ.get("TRITON_INTERPRET") == "1"
TOKENS = [1, 7, 300]
DTYPES = [torch.bfloat16, torch.float32]


def _close(actual, expected, dtype, loose=False):
    """bf16: a rounding step or two; loose adds room for cancellation after a rounded intermediate."""
    if dtype == torch.float32:
        tol = dict(rtol=1e-5, atol=1e-5)
    else:
        tol = dict(rtol=2e-2, atol=3e-2 if loose else 1e-2)
    torch.testing.assert_close(actual.float(), expected.float(), **tol)


def _randn(*shape, dtype, gen, scale=1.0):
    return (torch.randn(*shape, generator=gen, dtype=torch.float64) * scale).to(dtype).to(DEVICE)


def _rms64(x, weight, eps):
    x = x.double()
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * weight.double()


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("hidden_size", [1000, 1024, 4096])
@pytest.mark.parametrize("num_tokens", TOKENS)
@pytest.mark.parametrize("with_residual", [False, True])
def test_rms_norm(num_tokens, hidden_size, dtype, with_residual):
    gen = torch.Generator().manual_seed(num_tokens * hidden_size)
    ops = load("rms_norm")
    module = RMSNorm(hidden_size, eps=1e-6).to(DEVICE)
    with torch.no_grad():
        module.weight.copy_(_randn(hidden_size, dtype=torch.float32, gen=gen))
    module.to(dtype)
    x = _randn(num_tokens, hidden_size, dtype=dtype, gen=gen, scale=3.0)
    if not with_residual:
        out = ops.rms_norm(x, module.weight, module.eps)
        assert out.dtype == dtype and out.shape == x.shape
        _close(out, module.forward_native(x), dtype)
        _close(out, _rms64(x, module.weight, 1e-6), dtype)
        return
    residual = _randn(num_tokens, hidden_size, dtype=dtype, gen=gen)
    x_before, residual_before = x.clone(), residual.clone()
    out, new_residual = ops.fused_add_rms_norm(x, residual, module.weight, module.eps)
    ref_out, ref_residual = module.forward_native(x, residual)
    exact = not (INTERPRETED and dtype == torch.bfloat16)
    torch.testing.assert_close(new_residual, ref_residual, rtol=0 if exact else 2 ** -7, atol=0)
    _close(out, ref_out, dtype)
    _close(out, _rms64(x.double() + residual.double(), module.weight, 1e-6), dtype)
    assert torch.equal(x, x_before) and torch.equal(residual, residual_before)


def test_rms_norm_strided_rows_and_3d():
    gen = torch.Generator().manual_seed(5)
    ops = load("rms_norm")
    weight = _randn(64, dtype=torch.float32, gen=gen)
    wide = _randn(5, 3 * 64, dtype=torch.float32, gen=gen)
    _close(ops.rms_norm(wide[:, 64:128], weight, 1e-5), _rms64(wide[:, 64:128], weight, 1e-5), torch.float32)
    heads = wide.view(5, 3, 64)
    _close(ops.rms_norm(heads, weight, 1e-5), _rms64(heads, weight, 1e-5), torch.float32)
    with pytest.raises(ValueError, match="hidden_size"):
        ops.rms_norm(wide, weight, 1e-5)


def _rope(head_size, rotary_dim, scaled):
    params = dict(_LLAMA31_ROPE) if scaled else {"rope_type": "default", "rope_theta": 1e6}
    with torch.device(DEVICE):
        return RotaryEmbedding(head_size, rotary_dim, 4096, params)


def _qk64(rope, positions, x, weight, eps):
    """float64 per-head norm (weight None: none) then neox rope: x [T, N * D] -> same."""
    num_tokens, dim, half = x.shape[0], rope.head_size, rope.rotary_dim // 2
    heads = x.double().view(num_tokens, -1, dim)
    if weight is not None:
        heads = _rms64(heads, weight, eps)
    cos, sin = rope.cos_sin_cache.double()[positions].unsqueeze(1).chunk(2, dim=-1)
    x1, x2, rest = heads[..., :half], heads[..., half:2 * half], heads[..., 2 * half:]
    return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin, rest], dim=-1).view(num_tokens, -1)


ROPES = [(64, 64, False), (128, 128, True), (128, 64, False)]  # head_size, rotary_dim, llama3-scaled
# Every rope x norm x dtype for short batches; the interpreter is slow, so 300 tokens only twice.
QK_CASES = ([(t, *rope, dtype, qk_norm) for t in TOKENS[:2] for rope in ROPES for dtype in DTYPES
             for qk_norm in (False, True)]
            + [(300, *ROPES[1], torch.bfloat16, True), (300, *ROPES[0], torch.float32, False)])


@pytest.mark.parametrize("num_tokens,head_size,rotary_dim,scaled,dtype,qk_norm", QK_CASES)
def test_qk_norm_rope(num_tokens, head_size, rotary_dim, scaled, dtype, qk_norm):
    gen = torch.Generator().manual_seed(num_tokens + head_size)
    num_heads, num_kv_heads, eps = 4, 2, 1e-6
    rope = _rope(head_size, rotary_dim, scaled)
    qkv = _randn(num_tokens, (num_heads + 2 * num_kv_heads) * head_size, dtype=dtype, gen=gen, scale=2.0)
    q, k, _ = qkv.split([num_heads * head_size, num_kv_heads * head_size, num_kv_heads * head_size], dim=-1)
    positions = torch.randint(0, 4096, (num_tokens,), generator=gen).to(DEVICE)
    norms = [None, None]
    if qk_norm:
        norms = [RMSNorm(head_size, eps).to(DEVICE) for _ in range(2)]
        for module in norms:
            with torch.no_grad():
                module.weight.copy_(_randn(head_size, dtype=torch.float32, gen=gen))
            module.to(dtype)
    weights = [None if m is None else m.weight for m in norms]
    qkv_before = qkv.clone()
    out_q, out_k = load("qk_norm_rope").qk_norm_rope(q, k, positions, rope.cos_sin_cache, *weights, eps,
                                                     head_size)
    assert torch.equal(qkv, qkv_before) and out_q.is_contiguous() and out_q.dtype == dtype
    # The torch path: the norm modules' native forward per head, then RotaryEmbedding.forward.
    ref_q, ref_k = q, k
    if qk_norm:
        ref_q, ref_k = (m.forward_native(x.view(num_tokens, -1, head_size)).view(num_tokens, -1)
                        for m, x in zip(norms, (q, k)))
    ref_q, ref_k = rope(positions, ref_q, ref_k)
    _close(out_q, ref_q, dtype, loose=True)
    _close(out_k, ref_k, dtype, loose=True)
    _close(out_q, _qk64(rope, positions, q, weights[0], eps), dtype, loose=True)
    _close(out_k, _qk64(rope, positions, k, weights[1], eps), dtype, loose=True)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("intermediate_size", [1000, 1024, 4096])
@pytest.mark.parametrize("num_tokens", TOKENS)
def test_silu_and_mul(num_tokens, intermediate_size, dtype):
    gen = torch.Generator().manual_seed(num_tokens + intermediate_size)
    x = _randn(num_tokens, 2 * intermediate_size, dtype=dtype, gen=gen, scale=4.0)
    out = load("silu_and_mul").silu_and_mul(x)
    assert out.shape == (num_tokens, intermediate_size) and out.dtype == dtype
    _close(out, SiluAndMul.forward_native(x), dtype)
    gate, up = x.double().chunk(2, dim=-1)
    _close(out, torch.nn.functional.silu(gate) * up, dtype)


def test_empty_batch_launches_nothing():
    x = torch.empty(0, 256, device=DEVICE)
    assert load("silu_and_mul").silu_and_mul(x).shape == (0, 128)
    assert load("rms_norm").fused_add_rms_norm(x, x, torch.ones(256, device=DEVICE), 1e-6)[0].shape == (0, 256)


def test_layers_dispatch_to_the_kernels(monkeypatch):
    """Forcing the fused path through the layer modules gives what their torch paths give."""
    gen = torch.Generator().manual_seed(9)
    rope, head_size = _rope(64, 64, False), 64
    norm_q, norm_k, final = (RMSNorm(n).to(DEVICE) for n in (head_size, head_size, 96))
    for module in (norm_q, norm_k, final):
        with torch.no_grad():
            module.weight.copy_(_randn(module.hidden_size, dtype=torch.float32, gen=gen))
    x, residual = (_randn(3, 96, dtype=torch.float32, gen=gen) for _ in range(2))
    q, k = (_randn(3, n * head_size, dtype=torch.float32, gen=gen) for n in (2, 1))
    positions = torch.tensor([0, 9, 4095], device=DEVICE)
    monkeypatch.setattr(ops, "use_fused", lambda t: False)  # the norm and activation layers dispatch in ops
    monkeypatch.setattr(rotary, "use_fused", lambda t: False)
    expected = (final(x), final(x, residual), SiluAndMul()(x), rope.norm_and_rotate(positions, q, k),
                rope.norm_and_rotate(positions, q, k, norm_q, norm_k))
    for module in (ops, rotary):
        monkeypatch.setattr(module, "use_fused", lambda t: True)
    actual = (final(x), final(x, residual), SiluAndMul()(x), rope.norm_and_rotate(positions, q, k),
              rope.norm_and_rotate(positions, q, k, norm_q, norm_k))
    torch.testing.assert_close(actual, expected, rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="together"):
        rope.norm_and_rotate(positions, q, k, norm_q, None)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_kernels_replay_in_a_cuda_graph():
    gen = torch.Generator().manual_seed(11)
    rope, eps = _rope(128, 128, False), 1e-6
    weight, head_weight = (_randn(n, dtype=torch.bfloat16, gen=gen) for n in (1024, 128))
    x, residual = (_randn(4, 1024, dtype=torch.bfloat16, gen=gen) for _ in range(2))
    qkv = _randn(4, 8 * 128, dtype=torch.bfloat16, gen=gen)
    positions = torch.arange(4, device=DEVICE)

    def step():
        out, new_residual = load("rms_norm").fused_add_rms_norm(x, residual, weight, eps)
        q, k = load("qk_norm_rope").qk_norm_rope(qkv[:, :512], qkv[:, 512:768], positions, rope.cos_sin_cache,
                                                 head_weight, head_weight, eps, 128)
        return out, new_residual, q, k, load("silu_and_mul").silu_and_mul(x)

    step()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        captured = step()
    for tensor in (x, residual, qkv):
        tensor.copy_(_randn(*tensor.shape, dtype=tensor.dtype, gen=gen))
    positions.copy_(torch.tensor([7, 4000, 1, 2]))
    graph.replay()
    for got, want in zip(captured, step()):
        torch.testing.assert_close(got, want, rtol=0, atol=0)
