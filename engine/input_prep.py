"""Turns a SchedulerOutput into the model's flat inputs and the step's CommonAttentionMetadata.

All index arithmetic is vectorized numpy on the host; the results reach the device in a few
non-blocking copies from pinned buffers. Each live request owns one row of the persistent block table.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attention.backend import PAD_SLOT_ID, CommonAttentionMetadata
from kv_cache.block_table import BlockTable
from scheduler.output import SchedulerOutput


@dataclass
class StepInputs:
    """input_ids, positions: [T] int64 on the device; logits_indices: [num_sampling] int64 on the
    device (the last scheduled token of each request that samples); sampling_rows: indices into
    `scheduled` of those requests."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn: CommonAttentionMetadata
    logits_indices: torch.Tensor
    sampling_rows: list[int]


class InputPreparer:
    def __init__(self, max_num_seqs: int, max_model_len: int, block_size: int, device: torch.device) -> None:
        self.block_size = block_size
        self.device = device
        self.max_num_blocks_per_req = -(-max_model_len // block_size)
        self.block_table = BlockTable(max_num_seqs, self.max_num_blocks_per_req, block_size)
        self.free_rows = list(range(max_num_seqs - 1, -1, -1))
        self.rows: dict[str, int] = {}
        self.num_row_blocks: dict[str, int] = {}
        self.pin = device.type == "cuda"

    def release(self, request_ids: list[str]) -> None:
        """Give back the block-table rows of finished (or preempted) requests."""
        for request_id in request_ids:
            row = self.rows.pop(request_id, None)
            if row is not None:
                self.num_row_blocks.pop(request_id)
                self.block_table.clear_row(row)
                self.free_rows.append(row)

    def _update_rows(self, out: SchedulerOutput) -> np.ndarray:
        rows = np.empty(len(out.scheduled), dtype=np.int64)
        for i, s in enumerate(out.scheduled):
            rid = s.request.request_id
            if s.is_new or rid not in self.rows:
                if rid not in self.rows:
                    self.rows[rid] = self.free_rows.pop()
                self.block_table.set_row(self.rows[rid], s.block_ids)
            elif len(s.block_ids) > self.num_row_blocks[rid]:
                self.block_table.append_to_row(self.rows[rid], s.block_ids[self.num_row_blocks[rid]:])
            self.num_row_blocks[rid] = len(s.block_ids)
            rows[i] = self.rows[rid]
        return rows

    def prepare(self, out: SchedulerOutput, num_padded_tokens: int | None = None) -> StepInputs:
        """Flat inputs for the step; `num_padded_tokens` (>= real tokens) pads with slot PAD_SLOT_ID."""
        rows = self._update_rows(out)
        query_lens = np.fromiter((s.num_new_tokens for s in out.scheduled), np.int64, len(out.scheduled))
        computed = np.fromiter((s.num_computed_tokens for s in out.scheduled), np.int64, len(out.scheduled))
        num_tokens = int(query_lens.sum())
        num_padded = num_padded_tokens or num_tokens
        cu = np.zeros(len(rows) + 1, dtype=np.int64)
        np.cumsum(query_lens, out=cu[1:])
        req_of_token = np.repeat(np.arange(len(rows)), query_lens)
        positions = np.arange(num_tokens) - cu[req_of_token] + computed[req_of_token]
        input_ids = np.zeros(num_padded, dtype=np.int64)
        for i, s in enumerate(out.scheduled):
            c = s.num_computed_tokens
            input_ids[cu[i]:cu[i + 1]] = s.request.all_token_ids[c:c + s.num_new_tokens]
        slots = np.full(num_padded, PAD_SLOT_ID, dtype=np.int64)
        slots[:num_tokens] = self.block_table.slot_mapping(rows[req_of_token], positions)
        seq_lens = computed + query_lens
        max_seq_len = int(seq_lens.max())
        num_cols = -(-max_seq_len // self.block_size)
        block_table = self.block_table.gather(rows)[:, :num_cols]
        sampling_rows = [i for i, s in enumerate(out.scheduled) if s.samples]
        pos = np.zeros(num_padded, dtype=np.int64)
        pos[:num_tokens] = positions
        qsl = torch.from_numpy(cu.astype(np.int32))
        sl = torch.from_numpy(seq_lens.astype(np.int32))
        attn = CommonAttentionMetadata(
            num_reqs=len(rows), num_tokens=num_padded, query_start_loc=self._dev(qsl), query_start_loc_cpu=qsl,
            seq_lens=self._dev(sl), seq_lens_cpu=sl, max_query_len=int(query_lens.max()), max_seq_len=max_seq_len,
            block_table=self._dev(torch.from_numpy(np.ascontiguousarray(block_table))),
            slot_mapping=self._dev(torch.from_numpy(slots)), block_size=self.block_size)
        logits_indices = torch.from_numpy(cu[1:][sampling_rows] - 1)
        return StepInputs(input_ids=self._dev(torch.from_numpy(input_ids)), positions=self._dev(torch.from_numpy(pos)),
                          attn=attn, logits_indices=self._dev(logits_indices), sampling_rows=sampling_rows)

    def _dev(self, t: torch.Tensor) -> torch.Tensor:
        if self.device.type == "cpu":
            return t
        return t.pin_memory().to(self.device, non_blocking=True)
