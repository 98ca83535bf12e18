"""BlockManager: which KV blocks each request holds, and the prefix-cache lookups for new requests.

How the scheduler uses it, per request:
1. On admission (new, or re-admitted after preemption, `num_computed_tokens == 0`):
   `blocks, num_cached = get_computed_blocks(request)`, then at once
   `allocate_slots(request, num_new_tokens, blocks)`; on success it sets
   `request.num_computed_tokens = num_cached`. Nothing may allocate in between (a cached free
   block could be evicted; `allocate_slots` raises ValueError if that happened).
2. Each later step: `allocate_slots(request, num_new_tokens)` before the step runs.
3. Once a step has run (the scheduler's `update_from_output`, before any request of it is finished):
   `cache_computed_blocks(request, num_computed)` registers the blocks that step filled in the prefix
   index. Not earlier, but for one case: a block registered when the step that writes it is scheduled
   could be served to a request of that same step (which a decode-only step's kernel reads while it is
   written), or keep its hash after that step's share is taken back (priority preemption) and serve K/V
   that were never computed. The case: an admitted request's prefill chunk (the scheduler registers it
   at once; its step stores all K/V before any attention, and admissions are never taken back).
4. When the request finishes, is aborted (also while waiting) or is preempted: `free(request)`.

Prefix-cache stats (`num_prefix_queries` / `num_prefix_hits`, in tokens) count once per successful
admission, in `allocate_slots` (a failed admission that is retried next step is not counted twice); an
admission that may not read the cache (prompt logprobs left to compute) is no query. vLLM counts no
request with prompt logprobs; here the other sequences of such a request with n > 1, and a readmission
after preemption, read the cache and count.
"""
from __future__ import annotations

from collections.abc import Sequence

from engine.checks import check
from engine.request import Request
from kv_cache.block_hash import extend_block_hashes
from kv_cache.block_pool import BlockPool


class BlockManager:
    """Allocates, grows and frees the KV blocks of each request; finds cached prefix blocks."""

    def __init__(self, num_blocks: int, block_size: int, enable_prefix_caching: bool = True) -> None:
        check(block_size > 0, "block_size", block_size, "must be positive")
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.pool = BlockPool(num_blocks, enable_prefix_caching)
        self.num_prefix_queries = 0
        self.num_prefix_hits = 0
        self._blocks: dict[str, list[int]] = {}          # request id -> its block ids, in order
        self._hashes: dict[str, list[int]] = {}          # request id -> hashes of its full blocks
        self._num_registered: dict[str, int] = {}        # request id -> leading blocks already cached

    @property
    def num_blocks(self) -> int:
        return self.pool.num_blocks

    @property
    def num_free_blocks(self) -> int:
        return self.pool.num_free_blocks

    @property
    def usage(self) -> float:
        """Fraction of blocks in use, in [0, 1]."""
        return self.pool.usage

    @property
    def prefix_cache_hit_rate(self) -> float:
        """Hit tokens over queried tokens since start (0 before any query)."""
        return self.num_prefix_hits / self.num_prefix_queries if self.num_prefix_queries else 0.0

    def num_blocks_needed(self, num_tokens: int) -> int:
        """Blocks that hold `num_tokens` tokens."""
        return -(-num_tokens // self.block_size)

    def get_block_ids(self, request_id: str) -> list[int]:
        """The request's block ids in logical order; the live list, read it only (empty if unknown)."""
        return self._blocks.get(request_id, [])

    def get_computed_blocks(self, request: Request) -> tuple[list[int], int]:
        """Longest run of cached full blocks that prefixes `request.all_token_ids`.

        Leaves at least one token to compute (its logits are needed), and the tokens whose prompt
        logprobs are still to compute: at most `request.num_cacheable_tokens // block_size` blocks are
        returned. Returns the block ids and the number of tokens they cover. Changes no ref counts:
        pass the blocks to `allocate_slots` at once.
        """
        if not self.enable_prefix_caching:
            return [], 0
        hashes = extend_block_hashes(self._hashes.setdefault(request.request_id, []),
                                     request.all_token_ids, self.block_size)
        max_blocks = request.num_cacheable_tokens // self.block_size
        block_ids = []
        for block_hash in hashes[:max_blocks]:
            block_id = self.pool.lookup(block_hash)
            if block_id is None:
                break
            block_ids.append(block_id)
        return block_ids, len(block_ids) * self.block_size

    def allocate_slots(self, request: Request, num_new_tokens: int, computed_blocks: Sequence[int] = ()) -> bool:
        """Make the request's blocks cover `num_computed_tokens + len(computed_blocks) * block_size
        + num_new_tokens` tokens; False (and nothing changed) if the free blocks do not suffice.

        `computed_blocks` (from `get_computed_blocks`, admission only) become the request's first
        blocks. Registers nothing in the prefix cache: the new tokens are not computed yet
        (`cache_computed_blocks` does it once they are).
        """
        check(num_new_tokens >= 0, "num_new_tokens", num_new_tokens, "must be >= 0")
        rid = request.request_id
        held = self._blocks.get(rid)
        if held is not None and not computed_blocks:
            if request.num_computed_tokens + num_new_tokens <= len(held) * self.block_size:
                return True                              # most decode steps: the last block has room
        if computed_blocks:
            self._check_computed(request, held, computed_blocks)
        num_total = request.num_computed_tokens + len(computed_blocks) * self.block_size + num_new_tokens
        num_held = len(computed_blocks) + (len(held) if held else 0)
        num_alloc = max(0, self.num_blocks_needed(num_total) - num_held)
        num_revived = sum(1 for b in computed_blocks if self.pool.ref_counts[b] == 0)
        if num_alloc + num_revived > self.pool.num_free_blocks:
            return False
        self.pool.touch(computed_blocks)
        new_block_ids = self.pool.allocate(num_alloc)
        if held is None:
            held = self._admit(request, computed_blocks)
        held.extend(new_block_ids)
        return True

    def cache_computed_blocks(self, request: Request, num_computed_tokens: int) -> None:
        """Register in the prefix index the request's blocks that its first `num_computed_tokens` tokens
        (capped at the tokens known) fill completely; call it once the step computing them has run.

        No-op without prefix caching or for a request that holds no blocks (finished or preempted).
        """
        if self.enable_prefix_caching and request.request_id in self._blocks:
            self._cache_full_blocks(request, min(num_computed_tokens, request.num_tokens))

    def free(self, request: Request) -> None:
        """Release all the request's blocks (last block first) and forget it; safe to call twice."""
        rid = request.request_id
        block_ids = self._blocks.pop(rid, None)
        if block_ids:
            self.pool.free(reversed(block_ids))
        self._hashes.pop(rid, None)
        self._num_registered.pop(rid, None)

    def reset_prefix_cache(self) -> int:
        """Forget every cached block hash; returns how many were dropped.

        Blocks of running requests that were cached stay unshared; their blocks that fill later
        are cached as usual.
        """
        return self.pool.reset_prefix_cache()

    def _admit(self, request: Request, computed_blocks: Sequence[int]) -> list[int]:
        rid = request.request_id
        held = list(computed_blocks)
        self._blocks[rid] = held
        self._num_registered[rid] = len(held)
        logprobs = request.prompt_logprobs
        if self.enable_prefix_caching and (logprobs is None or logprobs.all_launched):
            self.num_prefix_queries += request.num_tokens
            self.num_prefix_hits += len(held) * self.block_size
        return held

    def _check_computed(self, request: Request, held: list[int] | None, computed_blocks: Sequence[int]) -> None:
        if held is not None or request.num_computed_tokens != 0:
            raise ValueError(f"computed_blocks are only for admission, but request {request.request_id} "
                             f"already holds blocks or computed tokens")
        hashes = self._hashes.get(request.request_id, [])
        if len(computed_blocks) > len(hashes) or any(
                self.pool.block_hashes[b] != h for b, h in zip(computed_blocks, hashes)):
            raise ValueError(f"computed_blocks of request {request.request_id} are stale: call "
                             f"allocate_slots right after get_computed_blocks")

    def _cache_full_blocks(self, request: Request, num_known_tokens: int) -> None:
        """Register the request's blocks that `num_known_tokens` computed tokens fill completely."""
        rid = request.request_id
        held = self._blocks[rid]
        num_full = min(num_known_tokens // self.block_size, len(held))
        num_done = self._num_registered[rid]
        if num_full <= num_done:
            return
        hashes = extend_block_hashes(self._hashes.setdefault(rid, []), request.all_token_ids, self.block_size)
        for i in range(num_done, num_full):
            self.pool.register(held[i], hashes[i])
        self._num_registered[rid] = num_full
