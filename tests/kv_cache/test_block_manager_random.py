"""BlockManager under a random workload: a simulated KV cache checks that every prefix hit returns
blocks that really hold the hit tokens, and ref counts / free list stay consistent."""
import random
from collections import Counter

from engine.request import Request
from engine.sampling_params import SamplingParams
from kv_cache.block_manager import BlockManager

BS = 4


def _write(kv, mgr, req, num_new):
    """Write the tokens computed this step into the simulated cache [block][offset] -> token id, then
    register the blocks they filled (the step has run)."""
    ids = mgr.get_block_ids(req.request_id)
    for pos in range(req.num_computed_tokens, req.num_computed_tokens + num_new):
        kv[ids[pos // BS]][pos % BS] = req.all_token_ids[pos]
    mgr.cache_computed_blocks(req, req.num_computed_tokens + num_new)


def _check_consistent(mgr, running):
    held = Counter(b for r in running for b in mgr.get_block_ids(r.request_id))
    pool = mgr.pool
    assert all(pool.ref_counts[b] == held.get(b, 0) for b in range(pool.num_blocks))
    assert set(pool._free) == {b for b in range(pool.num_blocks) if pool.ref_counts[b] == 0}
    for h, b in pool._hash_to_block.items():
        assert pool.block_hashes[b] == h


def _step(rng, mgr, kv, running, waiting, prefixes, next_id):
    op = rng.random()
    if op < 0.3 or not running:
        prompt = list(rng.choice(prefixes)) + [rng.randrange(100) for _ in range(rng.randrange(0, 7))]
        waiting.append(Request(f"r{next_id}", prompt, SamplingParams(max_tokens=64)))
    if waiting and rng.random() < 0.7:
        req = waiting[0]
        blocks, num_cached = mgr.get_computed_blocks(req)
        for i, b in enumerate(blocks):       # the hit blocks hold exactly the hit tokens
            assert kv[b] == req.all_token_ids[i * BS:(i + 1) * BS]
        chunk = min(req.num_tokens - num_cached, rng.randrange(1, 9))
        if mgr.allocate_slots(req, chunk, blocks):
            waiting.pop(0)
            req.num_computed_tokens = num_cached
            _write(kv, mgr, req, chunk)
            req.num_computed_tokens += chunk
            running.append(req)
    for req in list(running):
        if req.num_computed_tokens == req.num_tokens:
            req.append_output_token(rng.randrange(100))
        n = min(req.num_tokens - req.num_computed_tokens, rng.randrange(1, 6))
        if not mgr.allocate_slots(req, n):   # preempt (recompute)
            mgr.free(req)
            running.remove(req)
            req.num_computed_tokens = 0
            waiting.append(req)
            continue
        _write(kv, mgr, req, n)
        req.num_computed_tokens += n
        if rng.random() < 0.1 or req.num_tokens > 40:
            mgr.free(req)
            running.remove(req)


def test_random_workload_hits_are_correct_and_counts_consistent():
    rng = random.Random(0)
    mgr = BlockManager(24, BS)
    kv = [[None] * BS for _ in range(24)]
    prefixes = [[rng.randrange(100) for _ in range(rng.randrange(3, 14))] for _ in range(3)]
    running, waiting = [], []
    for i in range(400):
        _step(rng, mgr, kv, running, waiting, prefixes, i)
        _check_consistent(mgr, running)
    assert mgr.num_prefix_hits > 0
    for req in running + waiting:
        mgr.free(req)
    assert mgr.num_free_blocks == 24
