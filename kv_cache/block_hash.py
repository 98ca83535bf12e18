"""Chained hashes of full KV blocks, the keys of the prefix cache.

The hash of block i is `hash((hash of block i-1, tuple of its block_size token ids))`; block 0 chains
from `ROOT_HASH`. Two requests get the same hash for block i exactly when (barring a 64-bit hash
collision) their first `(i + 1) * block_size` tokens are equal. Only full blocks get a hash.

Python's hash of a tuple of ints is deterministic across processes (no string hashing is involved)
and costs well under a microsecond per block.
"""
from __future__ import annotations

from collections.abc import Sequence

ROOT_HASH = 0x6B765F63616368  # any fixed int; the parent of block 0


def hash_block(parent_hash: int, token_ids: Sequence[int]) -> int:
    """Hash of one full block given the hash of the block before it."""
    return hash((parent_hash, tuple(token_ids)))


def extend_block_hashes(block_hashes: list[int], token_ids: Sequence[int], block_size: int) -> list[int]:
    """Append to `block_hashes` the hashes of the full blocks of `token_ids` it does not hold yet.

    Incremental: only blocks past `len(block_hashes)` are hashed, so calling this after every step
    costs one hash per newly full block. Returns `block_hashes` (changed in place).
    """
    num_full_blocks = len(token_ids) // block_size
    parent = block_hashes[-1] if block_hashes else ROOT_HASH
    for i in range(len(block_hashes), num_full_blocks):
        parent = hash_block(parent, token_ids[i * block_size:(i + 1) * block_size])
        block_hashes.append(parent)
    return block_hashes
