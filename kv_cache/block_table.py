"""BlockTable: the runner's persistent CPU copy of every live request's block ids, and slot mapping.

The runner gives each live request a row and keeps it for the request's life; each step it writes
only the block ids that are new (`append_to_row`), then `gather`s the rows of the batch and computes
the slot mapping, both vectorized. Unused entries are 0 (a valid block id, never read past a
request's `seq_len`).
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from attention.backend import PAD_SLOT_ID
from engine.checks import check

__all__ = ["BlockTable", "PAD_SLOT_ID"]


class BlockTable:
    """`table` [max_num_reqs, max_num_blocks_per_req] int32 and `num_blocks_per_row` [max_num_reqs] int32."""

    def __init__(self, max_num_reqs: int, max_num_blocks_per_req: int, block_size: int) -> None:
        check(max_num_reqs > 0, "max_num_reqs", max_num_reqs, "must be positive")
        check(max_num_blocks_per_req > 0, "max_num_blocks_per_req", max_num_blocks_per_req, "must be positive")
        check(block_size > 0, "block_size", block_size, "must be positive")
        self.max_num_reqs = max_num_reqs
        self.max_num_blocks_per_req = max_num_blocks_per_req
        self.block_size = block_size
        self.table = np.zeros((max_num_reqs, max_num_blocks_per_req), dtype=np.int32)
        self.num_blocks_per_row = np.zeros(max_num_reqs, dtype=np.int32)

    def set_row(self, row: int, block_ids: Sequence[int]) -> None:
        """Make `row` hold exactly `block_ids` (the rest of the row becomes 0)."""
        self._check_row(row)
        self._check_len(len(block_ids))
        old_len = int(self.num_blocks_per_row[row])
        new_len = len(block_ids)
        self.table[row, :new_len] = block_ids
        if old_len > new_len:
            self.table[row, new_len:old_len] = 0
        self.num_blocks_per_row[row] = new_len

    def append_to_row(self, row: int, new_block_ids: Sequence[int]) -> None:
        """Write `new_block_ids` after the ids `row` already holds."""
        if not len(new_block_ids):
            return
        self._check_row(row)
        start = int(self.num_blocks_per_row[row])
        end = start + len(new_block_ids)
        self._check_len(end)
        self.table[row, start:end] = new_block_ids
        self.num_blocks_per_row[row] = end

    def clear_row(self, row: int) -> None:
        """Empty `row` (all 0) so it can serve another request."""
        self._check_row(row)
        self.table[row, :self.num_blocks_per_row[row]] = 0
        self.num_blocks_per_row[row] = 0

    def move_row(self, src: int, dst: int) -> None:
        """Copy row `src` into row `dst` and clear `src` (for runners that keep rows compact)."""
        self._check_row(src)
        if src == dst:
            return
        self.set_row(dst, self.table[src, :self.num_blocks_per_row[src]])
        self.clear_row(src)

    def gather(self, rows: np.ndarray, num_cols: int | None = None) -> np.ndarray:
        """The batch's block table: [len(rows), num_cols] int32 (default max_num_blocks_per_req),
        row i = the first num_cols entries of `table[rows[i]]`."""
        return self.table[np.asarray(rows, dtype=np.intp), :num_cols]

    def slot_mapping(self, rows: np.ndarray, positions: np.ndarray) -> np.ndarray:
        """Cache slot of each token: [T] int64 `table[rows, positions // bs] * bs + positions % bs`.

        Args:
            rows: [T] int, the table row of each token's request.
            positions: [T] int, each token's position in its sequence (0-based).
        Raises ValueError if a position lies past the blocks its row holds. Padding tokens are the
        caller's to add (`PAD_SLOT_ID`).
        """
        rows = np.asarray(rows, dtype=np.intp)
        positions = np.asarray(positions, dtype=np.int64)
        if rows.shape != positions.shape:
            raise ValueError(f"rows and positions must have the same shape, got {rows.shape} and {positions.shape}")
        block_idx = positions // self.block_size
        if positions.size and (positions.min() < 0 or np.any(block_idx >= self.num_blocks_per_row[rows])):
            raise ValueError("positions must be >= 0 and lie within the blocks of their row")
        block_ids = self.table[rows, block_idx].astype(np.int64)
        return block_ids * self.block_size + positions % self.block_size

    def _check_row(self, row: int) -> None:
        check(0 <= row < self.max_num_reqs, "row", row, f"must be in [0, {self.max_num_reqs})")

    def _check_len(self, num_blocks: int) -> None:
        check(num_blocks <= self.max_num_blocks_per_req, "number of blocks", num_blocks,
              f"must be <= max_num_blocks_per_req ({self.max_num_blocks_per_req})")
