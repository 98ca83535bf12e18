"""Turns a SchedulerOutput into the model's flat inputs and the step's CommonAttentionMetadata.

All index arithmetic is vectorized numpy on the host, written into persistent pinned buffers that
reach the device in one non-blocking copy each (see StepBuffers). Each live request owns one row of
the persistent block table. A decode batch can be padded to a CUDA-graph size: padded requests have
one token at position 0, seq_len 0 and slot PAD_SLOT_ID (never written). A step with prefill tokens
can be padded to a prefill graph's shape: padded tokens follow the last request's (query_start_loc
stops at its last token), at position 0 with slot PAD_SLOT_ID, and padded requests have no tokens
and seq_len 0.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from attention.backend import PAD_SLOT_ID, CommonAttentionMetadata, block_table_cols
from engine.step_buffers import StepBuffers
from kv_cache.block_table import BlockTable
from scheduler.output import SchedulerOutput


@dataclass
class InflightTokens:
    """The previous step's sampled tokens, still on the device: token_ids [num_sampled] int64 and
    each sampling request's row in it."""

    token_ids: torch.Tensor
    rows: dict[str, int]


@dataclass
class StepInputs:
    """input_ids, positions: [T] int64 on the device (T = padded token count); logits_indices:
    [num_sampling] int64 on the device (the last scheduled token of each request that samples);
    sampling_rows: indices into `scheduled` of those requests."""

    input_ids: torch.Tensor
    positions: torch.Tensor
    attn: CommonAttentionMetadata
    logits_indices: torch.Tensor
    sampling_rows: list[int]


class InputPreparer:
    def __init__(self, max_num_seqs: int, max_model_len: int, max_num_batched_tokens: int, block_size: int,
                 device: torch.device) -> None:
        self.block_size = block_size
        self.device = device
        self.max_num_blocks_per_req = block_table_cols(max_model_len, block_size)
        self.block_table = BlockTable(max_num_seqs, self.max_num_blocks_per_req, block_size)
        self.buffers = StepBuffers(max(max_num_batched_tokens, max_num_seqs), max_num_seqs,
                                   self.max_num_blocks_per_req, device)
        self.free_rows = list(range(max_num_seqs - 1, -1, -1))
        self.rows: dict[str, int] = {}
        self.num_row_blocks: dict[str, int] = {}

    def release(self, request_ids: list[str]) -> None:
        """Give back the block-table rows of finished or preempted requests."""
        for request_id in request_ids:
            row = self.rows.pop(request_id, None)
            if row is not None:
                self.num_row_blocks.pop(request_id)
                self.block_table.clear_row(row)
                self.free_rows.append(row)

    def _update_rows(self, out: SchedulerOutput) -> np.ndarray:
        rows = []
        row_of, num_row_blocks = self.rows, self.num_row_blocks
        for s in out.scheduled:
            rid = s.request.request_id
            row = row_of.get(rid)
            if row is None:
                row = row_of[rid] = self.free_rows.pop()
                num_row_blocks[rid] = 0
            num_blocks = len(s.block_ids)
            if s.is_new:
                self.block_table.set_row(row, s.block_ids)
            elif num_blocks > num_row_blocks[rid]:
                self.block_table.append_to_row(row, s.block_ids[num_row_blocks[rid]:])
            num_row_blocks[rid] = num_blocks
            rows.append(row)
        return np.array(rows, dtype=np.int64)

    def prepare(self, out: SchedulerOutput, num_padded_reqs: int | None = None,
                inflight: InflightTokens | None = None, num_padded_tokens: int | None = None) -> StepInputs:
        """Flat inputs for the step. `num_padded_reqs` pads to that many requests: of one token each
        (decode graphs), or of none when `num_padded_tokens` is given too (prefill graphs), which pads
        the tokens after the last request's to that many; `inflight` holds the previous step's
        sampled tokens, still on the device, that some requests need as their input now."""
        self.buffers.flip()
        num_reqs = len(out.scheduled)
        padded_reqs = num_padded_reqs or num_reqs
        rows = self._update_rows(out)
        query_lens = np.fromiter((s.num_new_tokens for s in out.scheduled), np.int64, num_reqs)
        computed = np.fromiter((s.num_computed_tokens for s in out.scheduled), np.int64, num_reqs)
        # padded requests: one token each (decode graphs), none with padded tokens (prefill graphs)
        cu = np.zeros(padded_reqs + 1, dtype=np.int64)
        np.cumsum(query_lens, out=cu[1:num_reqs + 1])
        cu[num_reqs + 1:] = cu[num_reqs] + np.arange(1, padded_reqs - num_reqs + 1) * (0 if num_padded_tokens else 1)
        num_tokens, padded_tokens = int(cu[num_reqs]), max(int(cu[-1]), num_padded_tokens or 0)
        req_of_token = np.repeat(np.arange(num_reqs), query_lens)
        positions = np.arange(num_tokens) - cu[req_of_token] + computed[req_of_token]
        seq_lens = computed + query_lens
        pending = self._fill_tokens(out, cu, positions, rows, req_of_token, num_tokens, padded_tokens, inflight)
        h = self.buffers.host
        h["query_start_loc"][:padded_reqs + 1] = cu
        h["seq_lens"][:num_reqs] = seq_lens
        h["seq_lens"][num_reqs:padded_reqs] = 0
        max_seq_len = int(seq_lens.max())
        num_cols = block_table_cols(max_seq_len, self.block_size)
        table = h["block_table"][:padded_reqs * num_cols].reshape(padded_reqs, num_cols)
        table[:num_reqs] = self.block_table.gather(rows, num_cols)
        table[num_reqs:] = 0
        sampling_rows = [i for i, s in enumerate(out.scheduled) if s.samples]
        h["logits_indices"][:len(sampling_rows)] = cu[1:][sampling_rows] - 1
        b = self.buffers
        attn = CommonAttentionMetadata(
            num_reqs=padded_reqs, num_tokens=padded_tokens,
            query_start_loc=b.upload("query_start_loc", padded_reqs + 1),
            query_start_loc_cpu=b.host_view("query_start_loc", padded_reqs + 1),
            seq_lens=b.upload("seq_lens", padded_reqs), seq_lens_cpu=b.host_view("seq_lens", padded_reqs),
            max_query_len=int(query_lens.max()), max_seq_len=max_seq_len,
            block_table=b.upload("block_table", padded_reqs * num_cols).view(padded_reqs, num_cols),
            slot_mapping=b.upload("slot_mapping", padded_tokens), block_size=self.block_size)
        input_ids = b.upload("input_ids", padded_tokens)
        if pending:
            h["inflight_dst"][:len(pending)], h["inflight_src"][:len(pending)] = zip(*pending)
            src = b.upload("inflight_src", len(pending))
            input_ids[b.upload("inflight_dst", len(pending))] = inflight.token_ids[src]
        return StepInputs(input_ids=input_ids, positions=b.upload("positions", padded_tokens),
                          attn=attn, logits_indices=b.upload("logits_indices", len(sampling_rows)),
                          sampling_rows=sampling_rows)

    def _fill_tokens(self, out, cu, positions, rows, req_of_token, num_tokens: int, padded_tokens: int,
                     inflight: InflightTokens | None) -> list[tuple[int, int]]:
        """Write input ids, positions and slots; returns (token index, row in inflight.token_ids) for
        inputs whose token the previous step is still sampling."""
        h = self.buffers.host
        ids = h["input_ids"]
        pending = []
        starts = cu.tolist()
        for i, s in enumerate(out.scheduled):
            c, n, start = s.num_computed_tokens, s.num_new_tokens, starts[i]
            known = s.request.all_token_ids
            if c + n > len(known):                   # a decode whose input token is still on the device
                pending.append((start, inflight.rows[s.request.request_id]))
                ids[start] = 0
            elif n == 1:
                ids[start] = known[c]
            else:
                ids[start:start + n] = known[c:c + n]
        ids[num_tokens:padded_tokens] = 0
        h["positions"][:num_tokens] = positions
        h["positions"][num_tokens:padded_tokens] = 0
        h["slot_mapping"][:num_tokens] = self.block_table.slot_mapping(rows[req_of_token], positions)
        h["slot_mapping"][num_tokens:padded_tokens] = PAD_SLOT_ID
        return pending
