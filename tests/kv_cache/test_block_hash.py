"""Chained block hashes: equal prefixes give equal hashes, any change propagates, partial blocks skipped."""
import random

from kv_cache.block_hash import extend_block_hashes


def _hashes(tokens, block_size):
    return extend_block_hashes([], tokens, block_size)


def test_same_prefix_same_hashes_and_partial_block_not_hashed():
    rng = random.Random(0)
    bs = 4
    prefix = [rng.randrange(1000) for _ in range(3 * bs)]
    a = _hashes(prefix + [1, 2, 3], bs)       # 3 full blocks + a partial one
    b = _hashes(prefix + [9, 9, 9, 9, 5], bs)
    assert len(a) == 3 and len(b) == 4
    assert a == b[:3]
    assert len(set(b)) == 4


def test_changed_token_in_block_zero_changes_every_hash():
    rng = random.Random(1)
    bs = 3
    tokens = [rng.randrange(1000) for _ in range(5 * bs)]
    other = list(tokens)
    other[1] += 1
    h1, h2 = _hashes(tokens, bs), _hashes(other, bs)
    assert all(x != y for x, y in zip(h1, h2))


def test_changed_token_in_later_block_keeps_earlier_hashes():
    rng = random.Random(2)
    bs = 4
    tokens = [rng.randrange(1000) for _ in range(4 * bs)]
    other = list(tokens)
    other[2 * bs + 1] += 1
    h1, h2 = _hashes(tokens, bs), _hashes(other, bs)
    assert h1[:2] == h2[:2] and h1[2] != h2[2] and h1[3] != h2[3]


def test_incremental_equals_from_scratch():
    rng = random.Random(3)
    bs = 5
    tokens = [rng.randrange(50) for _ in range(7 * bs + 2)]
    hashes = []
    for n in range(len(tokens) + 1):
        before = len(hashes)
        extend_block_hashes(hashes, tokens[:n], bs)
        assert len(hashes) - before <= 1
    assert hashes == _hashes(tokens, bs)
