"""BlockTable: row edits, gather order, and slot mapping against plain Python loops."""
import numpy as np
import pytest

from kv_cache.block_table import PAD_SLOT_ID, BlockTable


def _random_table(rng, num_rows, max_blocks, bs, num_phys=1000):
    table = BlockTable(num_rows + 2, max_blocks, bs)
    rows = rng.permutation(num_rows + 2)[:num_rows]          # rows in scattered order
    lists = {}
    for row in rows:
        n = int(rng.integers(1, max_blocks + 1))
        ids = [int(x) for x in rng.choice(num_phys, size=n, replace=False)]
        split = int(rng.integers(0, n + 1))
        table.set_row(int(row), ids[:split])
        table.append_to_row(int(row), ids[split:])
        lists[int(row)] = ids
    return table, lists


def test_slot_mapping_matches_python_loop():
    rng = np.random.default_rng(0)
    for bs in (1, 4, 16):
        table, lists = _random_table(rng, num_rows=5, max_blocks=6, bs=bs)
        rows, positions = [], []
        for row, ids in lists.items():
            seq_len = len(ids) * bs - int(rng.integers(0, bs))
            start = int(rng.integers(0, seq_len))
            for pos in range(start, seq_len):
                rows.append(row)
                positions.append(pos)
        expected = []
        for row, pos in zip(rows, positions):
            block_id = lists[row][pos // bs]
            expected.append(block_id * bs + pos % bs)
        got = table.slot_mapping(np.array(rows), np.array(positions))
        assert got.dtype == np.int64 and got.shape == (len(rows),)
        assert got.tolist() == expected


def test_gather_is_in_batch_order_with_zero_padding():
    rng = np.random.default_rng(1)
    table, lists = _random_table(rng, num_rows=4, max_blocks=5, bs=8)
    order = list(lists)[::-1]
    got = table.gather(np.array(order))
    assert got.dtype == np.int32 and got.shape == (4, 5)
    for i, row in enumerate(order):
        ids = lists[row]
        assert got[i].tolist() == ids + [0] * (5 - len(ids))
    narrow = table.gather(np.array(order), num_cols=2)
    assert narrow.shape == (4, 2) and narrow.tolist() == got[:, :2].tolist()


def test_set_shorter_clear_and_move_rows():
    table = BlockTable(3, 4, 2)
    table.set_row(0, [5, 6, 7])
    table.set_row(0, [9])
    assert table.table[0].tolist() == [9, 0, 0, 0]
    table.append_to_row(0, [3, 4])
    table.move_row(0, 2)
    assert table.table[2].tolist() == [9, 3, 4, 0] and table.table[0].tolist() == [0, 0, 0, 0]
    assert table.num_blocks_per_row.tolist() == [0, 0, 3]
    table.clear_row(2)
    assert not table.table.any() and not table.num_blocks_per_row.any()


def test_bad_input_is_rejected():
    table = BlockTable(2, 2, 4)
    with pytest.raises(ValueError, match="row"):
        table.set_row(2, [1])
    with pytest.raises(ValueError, match="max_num_blocks_per_req"):
        table.set_row(0, [1, 2, 3])
    table.set_row(0, [1, 2])
    with pytest.raises(ValueError, match="max_num_blocks_per_req"):
        table.append_to_row(0, [3])
    with pytest.raises(ValueError, match="positions"):
        table.slot_mapping(np.array([0]), np.array([8]))
    with pytest.raises(ValueError, match="block_size"):
        BlockTable(1, 1, 0)
    assert PAD_SLOT_ID == -1
