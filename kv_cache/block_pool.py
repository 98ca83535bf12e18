"""BlockPool: the physical KV blocks, their reference counts, the free LRU and the prefix-hash index.

Every block id in `[0, num_blocks)` is a real block (none is reserved); block tables pad unused
entries with 0, which is a valid id that kernels never read past a request's `seq_len`.

A block is *in use* while its ref count is above 0. A free block sits in the free LRU; if it still
has a hash it is also *cached*: a later request with the same prefix can take it back with `touch`
until `allocate` reuses it, which drops its hash from the index (eviction). `allocate` takes the
least recently freed block first.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable

from engine.checks import check


class BlockPool:
    """Ref-counted KV blocks with a free LRU and a `hash -> block_id` index of cached full blocks."""

    def __init__(self, num_blocks: int, enable_prefix_caching: bool = True) -> None:
        check(num_blocks > 0, "num_blocks", num_blocks, "must be positive")
        self.num_blocks = num_blocks
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hashes: list[int | None] = [None] * num_blocks
        # Free blocks in the order they were freed: the first key is reused first.
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(num_blocks))
        self._hash_to_block: dict[int, int] = {}

    @property
    def num_free_blocks(self) -> int:
        """Blocks with ref count 0, cached ones included (they can be evicted)."""
        return len(self._free)

    @property
    def num_cached_blocks(self) -> int:
        """Blocks that carry a hash, in use or free."""
        return len(self._hash_to_block)

    @property
    def usage(self) -> float:
        """Fraction of blocks in use (ref count above 0), in [0, 1]."""
        return 1.0 - len(self._free) / self.num_blocks

    def allocate(self, num_blocks: int) -> list[int]:
        """Take `num_blocks` free blocks (ref count becomes 1), least recently freed first.

        A reused block that carried a hash is evicted from the prefix index.
        """
        if not 0 <= num_blocks <= len(self._free):
            check(False, "num_blocks", num_blocks, f"must be in [0, {len(self._free)}] (the free blocks)")
        block_ids = []
        for _ in range(num_blocks):
            block_id, _ = self._free.popitem(last=False)
            self._evict(block_id)
            self.ref_counts[block_id] = 1
            block_ids.append(block_id)
        return block_ids

    def touch(self, block_ids: Iterable[int]) -> None:
        """Take a reference on each block; a free (cached) block leaves the free LRU."""
        for block_id in block_ids:
            if self.ref_counts[block_id] == 0:
                del self._free[block_id]
            self.ref_counts[block_id] += 1

    def free(self, block_ids: Iterable[int]) -> None:
        """Drop a reference on each block; blocks reaching 0 join the LRU tail in the order given.

        Callers pass a request's blocks last-first, so that its tail blocks (the least shareable)
        are evicted before its head blocks.
        """
        for block_id in block_ids:
            ref = self.ref_counts[block_id]
            if ref <= 0:
                raise ValueError(f"block {block_id} freed more often than it was taken")
            self.ref_counts[block_id] = ref - 1
            if ref == 1:
                self._free[block_id] = None

    def lookup(self, block_hash: int) -> int | None:
        """The cached block holding the full block with this hash, or None."""
        return self._hash_to_block.get(block_hash)

    def register(self, block_id: int, block_hash: int) -> bool:
        """Record that `block_id` holds the full block with `block_hash`; True if it was recorded.

        Not recorded when prefix caching is off, when another block already holds the same hash
        (two requests computed the same prefix at once: the first one stays the cached copy), or
        when the block already has a hash.
        """
        if not self.enable_prefix_caching or block_hash in self._hash_to_block:
            return False
        if self.block_hashes[block_id] is not None:
            return False
        self._hash_to_block[block_hash] = block_id
        self.block_hashes[block_id] = block_hash
        return True

    def reset_prefix_cache(self) -> int:
        """Forget every hash (blocks in use keep their data but are no longer shared). Returns the count."""
        num_dropped = len(self._hash_to_block)
        for block_id in self._hash_to_block.values():
            self.block_hashes[block_id] = None
        self._hash_to_block.clear()
        return num_dropped

    def _evict(self, block_id: int) -> None:
        block_hash = self.block_hashes[block_id]
        if block_hash is not None:
            del self._hash_to_block[block_hash]
            self.block_hashes[block_id] = None
