"""The `triton` backend equals torch_ref: mixed batches, split-KV decode, graph-capture buffers.

Without a GPU these run through Triton's interpreter (see conftest.py), so shapes stay tiny."""
import pytest
import torch

from attention.backends import triton_attn
from attention.backends.triton_attn import TritonAttnBackend
from attention_batches import assert_matches_reference, make_batch, run_backend

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"

# (query_lens, context_lens): 1-token decodes, a fresh prefill, chunked prefills over cached context.
MIXED = ([1, 19, 1, 6, 33], [40, 0, 17, 29, 21])


@pytest.mark.parametrize("group,head_size,block_size,dtype", [
    (1, 64, 16, torch.float32),
    (4, 128, 16, torch.bfloat16),
    (8, 64, 64, torch.float16),
    (4, 64, 256, torch.bfloat16),
    (3, 64, 32, torch.float16),
])
def test_mixed_batch_matches_reference(group, head_size, block_size, dtype):
    batch = make_batch(*MIXED, num_heads=2 * group, num_kv_heads=2, head_size=head_size,
                       block_size=block_size, dtype=dtype, device=DEVICE, num_pad_tokens=3, seed=group)
    assert_matches_reference(TritonAttnBackend, batch)


@pytest.mark.parametrize("block_size,dtype", [(16, torch.float32), (32, torch.bfloat16)])
def test_hnd_cache_order_matches_reference(block_size, dtype):
    """ENGINE_TRITON_KV_LAYOUT=HND: the kernels read and write a cache whose memory order is
    [.., Hkv, block_size, D] behind the usual shape (mixed batch, then a split-KV decode)."""
    batch = make_batch(*MIXED, num_heads=4, num_kv_heads=2, head_size=64, block_size=block_size, dtype=dtype,
                       device=DEVICE, num_pad_tokens=2, seed=5)
    assert_matches_reference(TritonAttnBackend, batch, hnd=True)
    decode = make_batch([1, 1, 1], [150, 3, 77], num_heads=4, num_kv_heads=2, head_size=64, block_size=block_size,
                        dtype=dtype, device=DEVICE, num_pad_tokens=2, seed=6)
    builder = TritonAttnBackend.get_builder_cls()(4, 2, 64, block_size, 8, 4096, DEVICE)
    assert builder.build(decode.common).num_splits > 1 or DEVICE == "cuda"
    assert_matches_reference(TritonAttnBackend, decode, hnd=True, builder=builder)


def test_allocate_kv_cache_layouts(monkeypatch):
    shape = (2, 5, 16, 2, 64)
    nhd = TritonAttnBackend.allocate_kv_cache(5, 16, 2, 64, torch.float16, torch.device("cpu"))
    assert nhd.shape == shape and nhd.is_contiguous()
    monkeypatch.setattr(triton_attn, "KV_LAYOUT", "HND")
    hnd = TritonAttnBackend.allocate_kv_cache(5, 16, 2, 64, torch.float16, torch.device("cpu"))
    assert hnd.shape == shape and hnd.permute(0, 1, 3, 2, 4).is_contiguous() and not hnd.any()
    monkeypatch.setattr(triton_attn, "KV_LAYOUT", "hnd")
    with pytest.raises(ValueError, match="ENGINE_TRITON_KV_LAYOUT must be one of"):
        TritonAttnBackend.allocate_kv_cache(5, 16, 2, 64, torch.float16, torch.device("cpu"))


def test_long_prefill_crosses_many_tiles():
    batch = make_batch([70, 1], [50, 90], num_heads=4, num_kv_heads=1, head_size=64, block_size=16,
                       dtype=torch.float32, device=DEVICE, seed=11)
    assert_matches_reference(TritonAttnBackend, batch)


@pytest.mark.parametrize("group,head_size,block_size,dtype", [
    (1, 128, 16, torch.float16),
    (4, 64, 16, torch.float32),
    (8, 128, 128, torch.bfloat16),
])
@pytest.mark.parametrize("min_split_len", [16, 4096])
@pytest.mark.parametrize("kv_cache_dtype", [None, torch.float8_e4m3fn])
def test_decode_matches_reference(monkeypatch, group, head_size, block_size, dtype, min_split_len, kv_cache_dtype):
    """Split-KV decode; with an fp8 cache too (on the CPU its new K/V are snapped onto the fp8 grid
    first: see test_fp8_kv_cache.py for why)."""
    monkeypatch.setitem(triton_attn.SPLIT_POLICY, "min_split_len", min_split_len)
    batch = make_batch([1, 1, 1], [150, 3, 77], num_heads=2 * group, num_kv_heads=2, head_size=head_size,
                       block_size=block_size, dtype=dtype, device=DEVICE, num_pad_tokens=2, seed=group,
                       kv_cache_dtype=kv_cache_dtype, snap_kv=DEVICE == "cpu" and kv_cache_dtype is not None)
    builder = TritonAttnBackend.get_builder_cls()(2 * group, 2, head_size, block_size, 8, 4096, DEVICE)
    metadata = builder.build(batch.common)
    assert metadata.is_decode
    if DEVICE == "cpu":  # 4 assumed multiprocessors: 3 requests x 2 KV heads < 8 programs
        assert (metadata.num_splits > 1) == (min_split_len == 16)
    assert_matches_reference(TritonAttnBackend, batch, builder=builder)


@pytest.mark.parametrize("block_size,min_split_len", [(16, 16), (16, 4096), (64, 16)])
@pytest.mark.parametrize("hnd", [False, True])
@pytest.mark.parametrize("fused", [True, False])
def test_decode_kernel_stores_kv(monkeypatch, block_size, min_split_len, hnd, fused):
    """DECODE_STORES_KV (the default): the decode kernel writes the step's K/V itself (split or not,
    padded requests skipped); off (ENGINE_TRITON_DECODE_STORES_KV=0): store_kv runs first. Either
    way the same output and the very same cache as torch_ref."""
    monkeypatch.setattr(triton_attn, "DECODE_STORES_KV", fused)
    monkeypatch.setitem(triton_attn.SPLIT_POLICY, "min_split_len", min_split_len)
    batch = make_batch([1, 1, 1], [150, 3, 77], num_heads=4, num_kv_heads=2, head_size=64,
                       block_size=block_size, dtype=torch.float32, device=DEVICE, num_pad_tokens=2, seed=9)
    stored = []
    store_kv = triton_attn.store_kv
    monkeypatch.setattr(triton_attn, "store_kv", lambda *a: stored.append(a) or store_kv(*a))
    builder = TritonAttnBackend.get_builder_cls()(4, 2, 64, block_size, 8, 4096, DEVICE)
    assert_matches_reference(TritonAttnBackend, batch, hnd=hnd, builder=builder)
    assert bool(stored) != fused, "the separate store kernel ran" if fused else "store_kv did not run"


def test_capture_metadata_is_fixed_and_refilled():
    shape = dict(num_heads=8, num_kv_heads=2, head_size=64, block_size=16, dtype=torch.float16,
                 device=DEVICE)
    builder = TritonAttnBackend.get_builder_cls()(8, 2, 64, 16, 4, 512, DEVICE)
    first = builder.build_for_capture(make_batch([1] * 3, [20, 5, 60], seed=1, **shape).common)
    batch = make_batch([1] * 3, [41, 9, 2], seed=2, **shape)
    second = builder.build_for_capture(batch.common)
    for name in ("query_start_loc", "seq_lens", "block_table", "slot_mapping", "part_out", "part_lse"):
        assert getattr(first, name).data_ptr() == getattr(second, name).data_ptr(), name
    assert first.num_splits == second.num_splits
    assert_matches_reference(TritonAttnBackend, batch, capture=True, builder=builder)


def test_capture_takes_one_request_prefill_with_padded_tokens():
    """A prefill graph's step: one request's 7 tokens over 20 cached ones, 9 padding tokens after
    them (slot -1, query_start_loc stops at 7); through the capture buffers it equals torch_ref."""
    batch = make_batch([7], [20], num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                       dtype=torch.float32, device=DEVICE, num_pad_tokens=9, seed=5)
    builder = TritonAttnBackend.get_builder_cls()(4, 2, 64, 16, 4, 512, DEVICE)
    metadata = builder.build_for_capture(batch.common)
    assert not metadata.is_decode and metadata.num_tokens == 16 and metadata.max_query_len == 7
    assert_matches_reference(TritonAttnBackend, batch, capture=True, builder=builder)


def test_capture_takes_a_mixed_step_with_padded_requests_and_tokens():
    """A prefill graph's step: a chunk of 5 tokens over 20 cached, two decodes, a fresh 3-token
    prompt, then two padding requests of no tokens (seq_len 0) and 9 padding tokens (slot -1);
    through the capture buffers it equals torch_ref. More requests than max_num_seqs are refused."""
    batch = make_batch([5, 1, 1, 3, 0, 0], [20, 30, 3, 0, 0, 0], num_heads=4, num_kv_heads=2, head_size=64,
                       block_size=16, dtype=torch.float32, device=DEVICE, num_pad_tokens=9, seed=6)
    builder = TritonAttnBackend.get_builder_cls()(4, 2, 64, 16, 6, 512, DEVICE)
    metadata = builder.build_for_capture(batch.common)
    assert not metadata.is_decode and (metadata.num_reqs, metadata.num_tokens) == (6, 19)
    assert_matches_reference(TritonAttnBackend, batch, capture=True, builder=builder)
    small = TritonAttnBackend.get_builder_cls()(4, 2, 64, 16, 4, 512, DEVICE)
    with pytest.raises(ValueError, match="num_reqs must be <= 4"):
        small.build_for_capture(batch.common)


GRAPH_SHAPE = dict(num_heads=8, num_kv_heads=2, head_size=128, block_size=16, dtype=torch.bfloat16, device=DEVICE)


def capture_then_replay(first, second):
    """Capture the backend's step on `first` (through the capture buffers), replay it on `second`'s
    metadata, query, key, value and cache; returns (output [T, H, D], the cache's first blocks)."""
    builder = TritonAttnBackend.get_builder_cls()(8, 2, 128, 16, 4, 1024, DEVICE)
    impl = TritonAttnBackend.get_impl_cls()(8, 128, 128 ** -0.5, 2)
    num_blocks = max(first.kv_cache.shape[1], second.kv_cache.shape[1])
    cache = torch.zeros(2, num_blocks, 16, 2, 128, dtype=torch.bfloat16, device=DEVICE)
    q, k, v = (torch.empty_like(t) for t in (first.query, first.key, first.value))
    out = torch.empty_like(q)
    metadata = builder.build_for_capture(first.common)
    impl.forward(q, k, v, cache, metadata, out)  # warm-up compiles outside the capture
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        impl.forward(q, k, v, cache, metadata, out)
    builder.build_for_capture(second.common)
    for dst, src in ((q, second.query), (k, second.key), (v, second.value)):
        dst.copy_(src)
    cache[:, :second.kv_cache.shape[1]].copy_(second.kv_cache)
    graph.replay()
    return out, cache[:, :second.kv_cache.shape[1]]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_with_new_contents():
    first = make_batch([1] * 4, [300, 5, 60, 900], seed=3, **GRAPH_SHAPE)
    second = make_batch([1] * 4, [7, 500, 33, 64], seed=4, **GRAPH_SHAPE)
    out, _ = capture_then_replay(first, second)
    want, _ = run_backend(TritonAttnBackend, second)
    err = ((out.float() - want.float()).norm() / want.float().norm()).item()
    assert err < 2e-2


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_of_a_padded_prefill():
    """Captured as one request's 64-token prefill, replayed with 37 real tokens over 100 cached ones
    and 27 padding tokens: the real rows equal the eager run's, and the padding writes no slot."""
    first = make_batch([64], [0], seed=5, **GRAPH_SHAPE)
    second = make_batch([37], [100], seed=6, num_pad_tokens=27, **GRAPH_SHAPE)
    out, cache = capture_then_replay(first, second)
    want, want_cache = run_backend(TritonAttnBackend, second)
    err = ((out[:37].float() - want[:37].float()).norm() / want[:37].float().norm()).item()
    assert err < 2e-2
    assert torch.equal(cache, want_cache)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="CUDA graphs need a GPU")
def test_cuda_graph_replay_of_a_padded_mixed_step():
    """Captured as the runner captures a prefill graph (4 requests, the first holding all 64 tokens),
    replayed with a 30-token chunk over 100 cached tokens, two decodes and a padding request of no
    tokens, then 32 padding tokens: the real rows equal the eager run's, and the padding writes no
    slot."""
    first = make_batch([64, 0, 0, 0], [0, 0, 0, 0], seed=7, **GRAPH_SHAPE)
    second = make_batch([30, 1, 1, 0], [100, 40, 7, 0], seed=8, num_pad_tokens=32, **GRAPH_SHAPE)
    out, cache = capture_then_replay(first, second)
    want, want_cache = run_backend(TritonAttnBackend, second)
    err = ((out[:32].float() - want[:32].float()).norm() / want[:32].float().norm()).item()
    assert err < 2e-2
    assert torch.equal(cache, want_cache)


@pytest.mark.parametrize("block_size,ok", [(16, True), (256, True), (8, False), (48, False), (512, False)])
def test_supported_block_sizes(block_size, ok):
    assert TritonAttnBackend.supports_block_size(block_size) is ok
    reasons = TritonAttnBackend.validate(torch.device("cuda"), torch.bfloat16, 128, block_size)
    assert (not reasons) is ok


def test_store_kv_follows_strided_slot_mapping():
    from attention.backends.torch_ref import store_kv as ref_store_kv
    from attention.ops.store_kv import store_kv
    gen = torch.Generator().manual_seed(5)
    cache = torch.full((2, 4, 16, 2, 64), 7.0)
    key, value = torch.randn(2, 6, 2, 64, generator=gen)
    slots = torch.tensor([[3, 0], [-1, 0], [60, 0], [17, 0], [-1, 0], [33, 0]])[:, 0]  # stride 2
    want = cache.clone()
    ref_store_kv(key, value, want, slots)
    store_kv(key.to(DEVICE), value.to(DEVICE), cache := cache.to(DEVICE), slots.to(DEVICE))
    assert torch.equal(cache.cpu(), want)


@pytest.mark.parametrize("min_split_len,rotary_dim,with_norm,dtype", [
    (16, 64, True, torch.float32), (4096, 64, False, torch.float32), (16, 32, True, torch.bfloat16)])
def test_decode_kernel_applies_qk_norm_rope(monkeypatch, min_split_len, rotary_dim, with_norm, dtype):
    """qk_rope fused into the decode kernel (raw q and k in, as views into one qkv tensor) gives the
    output and cache of the standalone qk_norm_rope kernel followed by the decode: split or not,
    partial rotary, with and without Qwen3's norms, padded rows skipped."""
    from attention.qk_rope import QKRope
    from models.layers.ops import load
    monkeypatch.setitem(triton_attn.SPLIT_POLICY, "min_split_len", min_split_len)
    batch = make_batch([1, 1, 1], [150, 3, 77], num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                       dtype=dtype, device=DEVICE, num_pad_tokens=2, seed=12)
    num_tokens, gen = batch.query.shape[0], torch.Generator().manual_seed(4)
    qkv = torch.cat([batch.query.flatten(1), batch.key.flatten(1), batch.value.flatten(1)], dim=1)
    q, k, v = qkv.split([256, 128, 128], dim=1)
    positions = torch.tensor([150, 3, 77, 0, 0], device=DEVICE)
    cache = torch.randn(200, rotary_dim, generator=gen).to(DEVICE)
    weights = [(torch.rand(64, generator=gen) + 0.5).to(dtype).to(DEVICE) for _ in range(2)] if with_norm else [None] * 2

    def apply(q, k):
        return load("qk_norm_rope").qk_norm_rope(q, k, positions, cache, *weights, 1e-6, 64)

    qk_rope = QKRope(positions, cache, *weights, 1e-6, apply)
    builder = TritonAttnBackend.get_builder_cls()(4, 2, 64, 16, 8, 4096, DEVICE)
    metadata = builder.build(batch.common)
    impl = TritonAttnBackend.get_impl_cls()(4, 64, 0.125, 2)
    assert impl.fuses_qk_rope(metadata, qk_rope) and (metadata.num_splits > 1) == (min_split_len == 16)
    results = []
    for fused in (True, False):
        kv_cache, out = batch.kv_cache.clone(), torch.full_like(batch.query, float("nan"))
        qq, kk = (q, k) if fused else apply(q, k)
        impl.forward(qq.view(num_tokens, 4, 64), kk.view(num_tokens, 2, 64), v.view(num_tokens, 2, 64), kv_cache,
                     metadata, out, **({"qk_rope": qk_rope} if fused else {}))
        results.append((out[:batch.num_valid_tokens], kv_cache))
    (out, kv_cache), (ref_out, ref_cache) = results
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert torch.equal(kv_cache, ref_cache)


@pytest.mark.parametrize("min_split_len", [16, 4096])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_own_token_at_tile_edges(monkeypatch, min_split_len, dtype):
    """The decode kernel stores the step's own K/V and attends to it: right when it is a request's
    only token, when it starts a new key tile (cached lengths 32, 64 and 128 are multiples of both
    BLOCK_N) and inside one, split or not."""
    monkeypatch.setitem(triton_attn.SPLIT_POLICY, "min_split_len", min_split_len)
    batch = make_batch([1] * 5, [0, 32, 64, 128, 5], num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                       dtype=dtype, device=DEVICE, num_pad_tokens=1, seed=21)
    builder = TritonAttnBackend.get_builder_cls()(4, 2, 64, 16, 8, 4096, DEVICE)
    if DEVICE == "cpu":
        assert (builder.build(batch.common).num_splits > 1) == (min_split_len == 16)
    assert_matches_reference(TritonAttnBackend, batch, builder=builder)


def test_empty_splits_leave_no_partial_output(monkeypatch):
    """With more splits than a context has tiles (graphs size them for max_model_len), the empty
    splits only write lse = -inf and the merge never reads their partial output (NaN here)."""
    monkeypatch.setitem(triton_attn.SPLIT_POLICY, "waves", 64)
    monkeypatch.setitem(triton_attn.SPLIT_POLICY, "min_split_len", 16)
    batch = make_batch([1, 1, 1], [150, 3, 40], num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                       dtype=torch.float32, device=DEVICE, num_pad_tokens=2, seed=13)
    builder = TritonAttnBackend.get_builder_cls()(4, 2, 64, 16, 8, 4096, DEVICE)
    assert builder.build(batch.common).num_splits >= 8
    builder._part_out.fill_(float("nan"))
    assert_matches_reference(TritonAttnBackend, batch, builder=builder)


@pytest.mark.parametrize("num_splits", [1, 3])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_decode_heads_first_grid_matches_default(num_splits, dtype):
    """HEADS_FIRST (grid (kv_head, request, split)) gives the output and cache of the default grid
    order (request, kv_head, split), with one split and with several; padded rows are skipped."""
    from attention.ops.decode_attention import DECODE_CONFIGS, decode_attention
    batch = make_batch([1, 1, 1], [150, 3, 77], num_heads=4, num_kv_heads=2, head_size=64, block_size=16,
                       dtype=dtype, device=DEVICE, num_pad_tokens=2, seed=14 + num_splits)
    common, num_reqs = batch.common, batch.common.num_reqs
    results = []
    base = DECODE_CONFIGS["cuda" if DEVICE == "cuda" else "cpu"]   # this device's tiles, both orders
    for config in (dict(base, HEADS_FIRST=False), dict(base, HEADS_FIRST=True)):
        kv_cache, out = batch.kv_cache.clone(), torch.full_like(batch.query, float("nan"))
        part_out = torch.full((num_reqs, 4, num_splits, 64), float("nan"), device=DEVICE)
        part_lse = torch.full((num_reqs, 4, num_splits), float("nan"), device=DEVICE)
        decode_attention(batch.query, kv_cache, out, common.query_start_loc, common.seq_lens, common.block_table,
                         0.125, num_reqs, num_splits, part_out, part_lse, config=config,
                         new_kv=(batch.key, batch.value, common.slot_mapping))
        results.append((out[:batch.num_valid_tokens], kv_cache))
    (ref_out, ref_cache), (out, kv_cache) = results
    assert torch.isfinite(ref_out).all() and torch.isfinite(out).all()
    torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-5)
    assert torch.equal(kv_cache, ref_cache)
