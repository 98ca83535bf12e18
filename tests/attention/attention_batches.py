"""Random paged batches for the attention tests, and a runner that compares a backend with torch_ref."""
from __future__ import annotations

import math
from dataclasses import dataclass, replace

import torch

from attention.backend import PAD_SLOT_ID, AttentionBackend, CommonAttentionMetadata
from attention.backends.torch_ref import TorchRefBackend

POISON = 7.0  # fills every cache slot a step must not touch
TOLERANCE = {torch.float16: 2e-2, torch.bfloat16: 2e-2, torch.float32: 1e-4}


@dataclass
class Batch:
    common: CommonAttentionMetadata
    query: torch.Tensor      # [T, H, D]
    key: torch.Tensor        # [T, Hkv, D]
    value: torch.Tensor      # [T, Hkv, D]
    kv_cache: torch.Tensor   # [2, num_blocks, block_size, Hkv, D], context filled, rest POISON
    num_valid_tokens: int
    exact_cache: torch.Tensor | None = None   # with kv_cache_dtype: the cache before the cast, in `dtype`


def make_batch(query_lens: list[int], context_lens: list[int], *, num_heads: int, num_kv_heads: int,
               head_size: int, block_size: int, dtype: torch.dtype, device: str, num_pad_tokens: int = 0,
               seed: int = 0, kv_cache_dtype: torch.dtype | None = None, snap_kv: bool = False) -> Batch:
    """Request r has context_lens[r] cached tokens and query_lens[r] new ones; physical blocks are a
    random permutation; `num_pad_tokens` padding tokens (slot -1) follow the real ones.

    kv_cache_dtype (e.g. float8_e4m3fn): the cache is cast to it (the exact one is kept in
    `exact_cache`); snap_kv also rounds the new key/value onto its grid, so that storing them is
    exact (Triton's CPU interpreter rounds float -> fp8 wrongly; see attention/ops/store_kv.py)."""
    gen = torch.Generator().manual_seed(seed)
    seq_lens = [c + q for c, q in zip(context_lens, query_lens)]
    blocks_per_req = [-(-s // block_size) for s in seq_lens]
    width = max(blocks_per_req) + 1
    num_blocks = sum(blocks_per_req) + 3
    perm = torch.randperm(num_blocks, generator=gen)
    table = torch.randint(0, num_blocks, (len(seq_lens), width), generator=gen, dtype=torch.int32)
    cache = torch.full((2, num_blocks, block_size, num_kv_heads, head_size), POISON, dtype=dtype)
    flat = cache.view(2, num_blocks * block_size, num_kv_heads, head_size)
    slots, used = [], 0
    for r, (ctx, q_len) in enumerate(zip(context_lens, query_lens)):
        table[r, :blocks_per_req[r]] = perm[used:used + blocks_per_req[r]].to(torch.int32)
        used += blocks_per_req[r]
        pos = torch.arange(ctx + q_len)
        req_slots = table[r, pos // block_size].long() * block_size + pos % block_size
        flat[:, req_slots[:ctx]] = torch.randn(2, ctx, num_kv_heads, head_size, generator=gen).to(dtype)
        slots.append(req_slots[ctx:])
    slots.append(torch.full((num_pad_tokens,), PAD_SLOT_ID, dtype=torch.long))
    num_valid = sum(query_lens)
    num_tokens = num_valid + num_pad_tokens
    qsl = torch.tensor([0] + query_lens, dtype=torch.int32).cumsum(0, dtype=torch.int32)

    def rand(*shape, snap=False):
        values = torch.randn(*shape, generator=gen)
        if snap:
            values = values.to(kv_cache_dtype)
        return values.to(dtype).to(device)

    seq_lens_t = torch.tensor(seq_lens, dtype=torch.int32)
    common = CommonAttentionMetadata(
        num_reqs=len(seq_lens), num_tokens=num_tokens, query_start_loc=qsl.to(device), query_start_loc_cpu=qsl,
        seq_lens=seq_lens_t.to(device), seq_lens_cpu=seq_lens_t, max_query_len=max(query_lens),
        max_seq_len=max(seq_lens), block_table=table.to(device), slot_mapping=torch.cat(slots).to(device),
        block_size=block_size)
    query = rand(num_tokens, num_heads, head_size)
    key, value = (rand(num_tokens, num_kv_heads, head_size, snap=snap_kv) for _ in range(2))
    if kv_cache_dtype is None:
        return Batch(common, query, key, value, cache.to(device), num_valid)
    return Batch(common, query, key, value, cache.to(kv_cache_dtype).to(device), num_valid, cache.to(device))


def run_backend(backend: type[AttentionBackend], batch: Batch, *, capture: bool = False,
                builder=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Run one step of `backend` on a copy of the batch's cache; return (output [T, H, D], cache)."""
    num_heads, head_size = batch.query.shape[1:]
    num_kv_heads = batch.key.shape[1]
    common = batch.common
    if builder is None:
        builder = backend.get_builder_cls()(num_heads, num_kv_heads, head_size, common.block_size,
                                            max_num_seqs=common.num_tokens, max_model_len=4096,
                                            device=batch.query.device)
    metadata = builder.build_for_capture(common) if capture else builder.build(common)
    impl = backend.get_impl_cls()(num_heads, head_size, 1.0 / math.sqrt(head_size), num_kv_heads)
    cache = batch.kv_cache.clone()
    output = torch.full_like(batch.query, float("nan"))
    impl.forward(batch.query, batch.key, batch.value, cache, metadata, output)
    return output, cache


def hnd_order(kv_cache: torch.Tensor) -> torch.Tensor:
    """The same [2, num_blocks, block_size, Hkv, D] values, stored [2, num_blocks, Hkv, block_size, D]."""
    return kv_cache.permute(0, 1, 3, 2, 4).contiguous().permute(0, 1, 3, 2, 4)


def assert_matches_reference(backend: type[AttentionBackend], batch: Batch, hnd: bool = False, **kwargs) -> None:
    """Output within TOLERANCE (relative L2) of torch_ref; cache written exactly like torch_ref's,
    so padding slots and unused slots still hold POISON. `hnd`: the tested backend gets the cache in
    the HND memory order (torch_ref keeps NHD)."""
    tested = replace(batch, kv_cache=hnd_order(batch.kv_cache)) if hnd else batch
    out, cache = run_backend(backend, tested, **kwargs)
    assert cache.stride() == tested.kv_cache.stride()
    ref_out, ref_cache = run_backend(TorchRefBackend, batch)
    n = batch.num_valid_tokens
    got, want = out[:n].double().cpu(), ref_out[:n].double().cpu()
    assert torch.isfinite(got).all(), "output has non-finite values"
    err = ((got - want).norm() / want.norm()).item()
    assert err < TOLERANCE[batch.query.dtype], f"relative error {err:.2e}"
    cache, ref_cache = cache.cpu(), ref_cache.cpu()
    assert cache.dtype == batch.kv_cache.dtype and torch.equal(cache, ref_cache), "kv cache differs from torch_ref's"
    untouched = (batch.kv_cache.cpu() == POISON).all(-1).all(-1).sum() - batch.num_valid_tokens * 2
    assert (cache == POISON).all(-1).all(-1).sum() == untouched, "a slot outside the slot mapping was written"
