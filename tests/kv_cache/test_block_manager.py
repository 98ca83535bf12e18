"""BlockManager: allocation across blocks, freeing, prefix hits, failure atomicity, LRU reuse; blocks
enter the prefix index once their step has run (cache_computed_blocks), never at allocation."""
import random

import pytest

from engine.request import Request
from engine.sampling_params import SamplingParams
from kv_cache.block_manager import BlockManager

BS = 4


def _req(rid, tokens):
    return Request(rid, list(tokens), SamplingParams(max_tokens=64))


def _admit(mgr, req, num_new=None):
    """What the scheduler does on admission, then the step runs (its blocks are registered); returns the
    cached token count or None on failure."""
    blocks, num_cached = mgr.get_computed_blocks(req)
    num_new = req.num_tokens - num_cached if num_new is None else num_new
    if not mgr.allocate_slots(req, num_new, blocks):
        return None
    req.num_computed_tokens = num_cached + num_new
    mgr.cache_computed_blocks(req, req.num_computed_tokens)
    return num_cached


def _decode(mgr, req, token):
    """One decode step, scheduled and run."""
    req.append_output_token(token)
    assert mgr.allocate_slots(req, 1)
    req.num_computed_tokens += 1
    mgr.cache_computed_blocks(req, req.num_computed_tokens)


def test_allocate_append_across_block_boundary_and_free_returns_all():
    mgr = BlockManager(10, BS)
    req = _req("a", range(100, 106))            # 6 tokens -> 2 blocks
    assert _admit(mgr, req) == 0
    assert len(mgr.get_block_ids("a")) == 2 and mgr.num_free_blocks == 8
    _decode(mgr, req, 7)                         # 7 tokens, still 2 blocks
    _decode(mgr, req, 8)                         # 8 tokens, still 2 blocks
    assert len(mgr.get_block_ids("a")) == 2
    _decode(mgr, req, 9)                         # 9 tokens -> 3rd block
    ids = mgr.get_block_ids("a")
    assert len(ids) == 3 and len(set(ids)) == 3
    assert mgr.usage == pytest.approx(0.3)
    mgr.free(req)
    mgr.free(req)                                # safe twice
    assert mgr.num_free_blocks == 10 and mgr.get_block_ids("a") == []


def test_prefix_hit_for_second_request_counts_tokens():
    rng = random.Random(0)
    shared = [rng.randrange(1000) for _ in range(3 * BS)]
    mgr = BlockManager(16, BS)
    a = _req("a", shared + [1, 2])
    assert _admit(mgr, a) == 0
    b = _req("b", shared + [3, 4, 5])
    blocks, num_cached = mgr.get_computed_blocks(b)
    assert num_cached == 3 * BS and blocks == mgr.get_block_ids("a")[:3]
    assert mgr.allocate_slots(b, b.num_tokens - num_cached, blocks)
    assert mgr.get_block_ids("b")[:3] == blocks
    assert all(mgr.pool.ref_counts[x] == 2 for x in blocks)
    assert mgr.num_prefix_queries == a.num_tokens + b.num_tokens
    assert mgr.num_prefix_hits == 3 * BS
    assert mgr.prefix_cache_hit_rate == pytest.approx(12 / 29)


def test_an_admission_that_may_not_read_the_cache_is_no_query():
    """Prompt logprobs left to compute keep the request off the cache, and out of its stats (vLLM's)."""
    mgr = BlockManager(16, BS)
    tokens = list(range(3 * BS))
    assert _admit(mgr, _req("a", tokens)) == 0
    b = Request("b", tokens, SamplingParams(max_tokens=4, prompt_logprobs=1))
    assert _admit(mgr, b) == 0
    assert (mgr.num_prefix_queries, mgr.num_prefix_hits) == (3 * BS, 0)
    b.prompt_logprobs.num_launched = b.prompt_logprobs.num_positions      # all computed: a later admission reads
    mgr.free(b)
    b.num_computed_tokens = 0
    assert _admit(mgr, b) == 2 * BS
    assert (mgr.num_prefix_queries, mgr.num_prefix_hits) == (6 * BS, 2 * BS)


def test_full_prompt_hit_leaves_one_token_to_compute():
    rng = random.Random(1)
    for num_tokens in (2 * BS, 2 * BS + 1, 3 * BS - 1):
        mgr = BlockManager(16, BS)
        prompt = [rng.randrange(1000) for _ in range(num_tokens)]
        a = _req("a", prompt)
        _admit(mgr, a)
        b = _req("b", prompt)
        blocks, num_cached = mgr.get_computed_blocks(b)
        assert num_cached == (num_tokens - 1) // BS * BS
        assert 1 <= num_tokens - num_cached
        assert mgr.allocate_slots(b, num_tokens - num_cached, blocks)


def test_allocation_failure_changes_nothing():
    rng = random.Random(2)
    prompt = [rng.randrange(1000) for _ in range(2 * BS)]
    mgr = BlockManager(4, BS)
    a = _req("a", prompt + [1])
    _admit(mgr, a)                               # 3 blocks, 2 full ones cached
    mgr.free(a)
    filler = _req("f", range(BS))
    _admit(mgr, filler)                          # takes the one never-cached block
    b = _req("b", prompt + list(range(3 * BS)))  # 2 cached blocks + needs 3 more, only 1 free
    blocks, num_cached = mgr.get_computed_blocks(b)
    assert num_cached == 2 * BS
    state = (list(mgr.pool.ref_counts), mgr.num_free_blocks, dict(mgr.pool._hash_to_block),
             mgr.num_prefix_queries, mgr.num_prefix_hits)
    assert not mgr.allocate_slots(b, b.num_tokens - num_cached, blocks)
    assert state == (list(mgr.pool.ref_counts), mgr.num_free_blocks, dict(mgr.pool._hash_to_block),
                     mgr.num_prefix_queries, mgr.num_prefix_hits)
    assert mgr.get_block_ids("b") == []
    # a running request that cannot grow is left as it was too
    held = list(mgr.get_block_ids("f"))
    assert not mgr.allocate_slots(filler, 4 * BS)
    assert mgr.get_block_ids("f") == held


def test_touching_cached_free_blocks_counts_against_free_pool():
    rng = random.Random(3)
    prompt = [rng.randrange(1000) for _ in range(2 * BS)]
    mgr = BlockManager(3, BS)
    a = _req("a", prompt + [1])
    _admit(mgr, a)
    mgr.free(a)                                  # 3 free, 2 of them cached
    b = _req("b", prompt + list(range(2 * BS)))  # reuses 2 cached, needs 2 more: only 1 left
    blocks, num_cached = mgr.get_computed_blocks(b)
    assert len(blocks) == 2
    assert not mgr.allocate_slots(b, b.num_tokens - num_cached, blocks)
    assert mgr.allocate_slots(b, BS, blocks)      # chunked: one more block fits
    assert mgr.num_free_blocks == 0


def test_finished_request_blocks_reused_then_evicted_lru():
    rng = random.Random(4)
    p1 = [rng.randrange(1000) for _ in range(2 * BS)]
    p2 = [rng.randrange(1000) for _ in range(2 * BS)]
    mgr = BlockManager(6, BS)
    a, b = _req("a", p1 + [1]), _req("b", p2 + [2])
    _admit(mgr, a)
    _admit(mgr, b)
    a_ids, b_ids = list(mgr.get_block_ids("a")), list(mgr.get_block_ids("b"))
    mgr.free(a)
    mgr.free(b)
    # a later request sharing a's prefix gets a's blocks back
    c = _req("c", p1 + [5, 6])
    assert _admit(mgr, c) == 2 * BS
    assert mgr.get_block_ids("c")[:2] == a_ids[:2]
    mgr.free(c)
    # pool short: the LRU holds b's blocks, then c's (freed last); a fresh request of
    # 3 blocks evicts the least recently freed ones: b's blocks (freed before c's)
    d = _req("d", [rng.randrange(1000) for _ in range(3 * BS)])
    _admit(mgr, d)
    assert set(mgr.get_block_ids("d")) == set(b_ids)
    assert mgr.get_computed_blocks(_req("x", p2 + [2]))[1] == 0
    assert mgr.get_computed_blocks(_req("y", p1 + [9]))[1] == 2 * BS


def test_tail_blocks_evicted_before_head_blocks():
    rng = random.Random(5)
    prompt = [rng.randrange(1000) for _ in range(3 * BS)]
    mgr = BlockManager(4, BS)
    a = _req("a", prompt + [1])
    _admit(mgr, a)
    mgr.free(a)
    mgr.allocate_slots(_req("z", [0]), 2 * BS)   # takes 2 blocks: the partial and the 3rd full one
    probe = _req("p", prompt + [1])
    assert mgr.get_computed_blocks(probe)[1] == 2 * BS


def test_decode_blocks_get_cached_and_chunked_prefill_registers_progressively():
    rng = random.Random(6)
    prompt = [rng.randrange(1000) for _ in range(2 * BS + 1)]
    mgr = BlockManager(16, BS)
    a = _req("a", prompt)
    assert _admit(mgr, a, num_new=BS + 1) == 0   # first chunk: one full block cached
    assert mgr.pool.num_cached_blocks == 1
    assert mgr.allocate_slots(a, a.num_tokens - a.num_computed_tokens)
    a.num_computed_tokens = a.num_tokens
    mgr.cache_computed_blocks(a, a.num_computed_tokens)
    assert mgr.pool.num_cached_blocks == 2
    for t in range(BS - 1):
        _decode(mgr, a, 500 + t)
    assert mgr.pool.num_cached_blocks == 3       # the block filled by decoding is cached
    b = _req("b", a.all_token_ids + [1])
    assert mgr.get_computed_blocks(b)[1] == 3 * BS


def test_blocks_are_registered_once_computed_not_when_allocated():
    """allocate_slots only reserves: a block its step will fill is no hit before cache_computed_blocks
    (the scheduler calls it once that step has run), which registers full blocks of known tokens only."""
    mgr = BlockManager(16, BS)
    prompt = list(range(2 * BS + 1))
    a = _req("a", prompt)
    blocks, _ = mgr.get_computed_blocks(a)
    assert mgr.allocate_slots(a, a.num_tokens, blocks)
    assert mgr.pool.num_cached_blocks == 0
    assert mgr.get_computed_blocks(_req("b", prompt))[1] == 0
    mgr.cache_computed_blocks(a, BS + 1)                # a first chunk of BS + 1 tokens ran
    assert mgr.get_computed_blocks(_req("c", prompt))[1] == BS
    mgr.cache_computed_blocks(a, 100)                   # capped at the 2 * BS + 1 known tokens
    assert mgr.pool.num_cached_blocks == 2
    a.num_computed_tokens = a.num_tokens
    for token in (5, 6, 7):
        a.append_output_token(token)
    assert mgr.allocate_slots(a, 3)                     # the step that fills the third block, scheduled
    assert mgr.pool.num_cached_blocks == 2
    mgr.cache_computed_blocks(a, 3 * BS)
    assert mgr.get_computed_blocks(_req("d", a.all_token_ids + [1]))[1] == 3 * BS


def test_cache_computed_blocks_without_prefix_caching_or_blocks_does_nothing():
    off = BlockManager(8, BS, enable_prefix_caching=False)
    a = _req("a", range(2 * BS))
    _admit(off, a)
    off.cache_computed_blocks(a, 2 * BS)
    assert off.pool.num_cached_blocks == 0
    on = BlockManager(8, BS)
    on.cache_computed_blocks(_req("never-admitted", range(2 * BS)), 2 * BS)
    b = _req("b", range(2 * BS))
    _admit(on, b)
    on.free(b)
    on.cache_computed_blocks(b, 2 * BS)                 # freed (finished or preempted): nothing to do
    assert on.pool.num_cached_blocks == 2 and on.num_free_blocks == 8


def test_prefix_caching_off_never_hits():
    mgr = BlockManager(8, BS, enable_prefix_caching=False)
    a = _req("a", range(3 * BS))
    _admit(mgr, a)
    assert mgr.get_computed_blocks(_req("b", range(3 * BS))) == ([], 0)
    assert mgr.pool.num_cached_blocks == 0 and mgr.num_prefix_queries == 0


def test_stale_computed_blocks_are_rejected():
    prompt = list(range(2 * BS + 1))
    mgr = BlockManager(3, BS)
    a = _req("a", prompt)
    _admit(mgr, a)
    mgr.free(a)
    b = _req("b", prompt)
    blocks, num_cached = mgr.get_computed_blocks(b)
    assert mgr.allocate_slots(_req("z", [0]), 3 * BS)   # evicts everything
    mgr.free(_req("z", [0]))
    with pytest.raises(ValueError, match="stale"):
        mgr.allocate_slots(b, 1, blocks)


def test_sizes_and_reset():
    mgr = BlockManager(5, BS)
    assert mgr.num_blocks_needed(0) == 0 and mgr.num_blocks_needed(BS) == 1
    assert mgr.num_blocks_needed(BS + 1) == 2
    a = _req("a", range(2 * BS))
    _admit(mgr, a)
    assert mgr.reset_prefix_cache() == 2
    assert mgr.get_computed_blocks(_req("b", range(2 * BS + 1))) == ([], 0)
    with pytest.raises(ValueError, match="block_size"):
        BlockManager(4, 0)
