"""BlockPool: ref counts, LRU order of free blocks, prefix index and eviction."""
import pytest

from kv_cache.block_pool import BlockPool


def test_allocate_and_free_track_ref_counts_and_usage():
    pool = BlockPool(8)
    a = pool.allocate(3)
    assert a == [0, 1, 2] and pool.num_free_blocks == 5
    assert pool.usage == pytest.approx(3 / 8)
    pool.touch([a[1]])
    pool.free(a)
    assert pool.ref_counts[a[1]] == 1 and pool.num_free_blocks == 7
    pool.free([a[1]])
    assert pool.num_free_blocks == 8 and pool.usage == 0.0
    with pytest.raises(ValueError, match="freed more often"):
        pool.free([a[1]])


def test_allocate_too_many_is_an_error_naming_the_field():
    pool = BlockPool(4)
    pool.allocate(3)
    with pytest.raises(ValueError, match="num_blocks"):
        pool.allocate(2)
    assert pool.num_free_blocks == 1


def test_free_order_is_reuse_order():
    pool = BlockPool(6)
    blocks = pool.allocate(6)
    pool.free([4, 1, 5])
    pool.free([0])
    assert pool.allocate(4) == [4, 1, 5, 0]
    del blocks


def test_touch_takes_cached_free_block_out_of_lru():
    pool = BlockPool(4)
    blocks = pool.allocate(4)
    pool.register(blocks[2], 1234)
    pool.free(reversed(blocks))
    assert pool.lookup(1234) == blocks[2]
    pool.touch([blocks[2]])
    assert pool.num_free_blocks == 3 and pool.ref_counts[blocks[2]] == 1
    assert blocks[2] not in pool.allocate(3)
    assert pool.lookup(1234) == blocks[2]


def test_reuse_evicts_hash_from_index():
    pool = BlockPool(2)
    a, b = pool.allocate(2)
    assert pool.register(a, 11) and pool.register(b, 22)
    pool.free([b, a])
    assert pool.num_cached_blocks == 2
    assert pool.allocate(1) == [b]
    assert pool.lookup(22) is None and pool.lookup(11) == a
    assert pool.block_hashes[b] is None


def test_register_keeps_first_copy_and_respects_switch():
    pool = BlockPool(3)
    a, b, c = pool.allocate(3)
    assert pool.register(a, 7)
    assert not pool.register(b, 7)          # same content elsewhere: first copy stays
    assert not pool.register(a, 8)          # a block gets one hash
    assert pool.lookup(7) == a and pool.block_hashes[b] is None
    off = BlockPool(3, enable_prefix_caching=False)
    (d,) = off.allocate(1)
    assert not off.register(d, 7) and off.lookup(7) is None
    del c


def test_reset_prefix_cache_drops_all_hashes():
    pool = BlockPool(3)
    a, b, _ = pool.allocate(3)
    pool.register(a, 1)
    pool.register(b, 2)
    pool.free([b])
    assert pool.reset_prefix_cache() == 2
    assert pool.lookup(1) is None and pool.lookup(2) is None and pool.num_cached_blocks == 0
