"""The tile GEMM sweep's table helpers (engine/bench/tile_gemm.py): the configs it sweeps, the
table it writes and its merge into an existing table (no GPU: the timing itself needs one)."""
from engine.bench import tile_gemm as bench

A = dict(BLOCK_M=64, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=4)
B = dict(BLOCK_M=128, BLOCK_N=64, BLOCK_K=128, num_warps=8, num_stages=3, SPLIT_K=2)


def test_first_configs_sweep_split_k_and_block_k():
    configs = bench._first_configs(256, False, splits=(1, 4), block_ks=(128,))
    assert {cfg.get("SPLIT_K", 1) for cfg in configs} == {1, 4}
    assert {cfg["BLOCK_K"] for cfg in configs} == {128}
    assert all("SPLIT_K" not in cfg for cfg in bench._first_configs(256, False))   # default: no split
    assert all(bench._fits(cfg, True) for cfg in bench._first_configs(256, True, splits=(1, 2)))


def test_config_table_marks_cublas_wins_and_merges_equal_buckets():
    rows = [dict(n=4096, k=4096, silu=False, m=m, config=cfg, tile_us=t, cublas_us=10.0)
            for m, cfg, t in ((128, A, 9.0), (192, B, 8.0), (256, B, 7.0), (64, A, 12.0))]
    assert bench._config_table(rows) == {"4096,4096,0": [[64, None], [128, A], [256, B]]}


def test_merge_tables_keeps_base_buckets_below_the_sweep():
    base = {"4096,4096,0": [[32, None], [64, A], [256, None]], "1024,2048,0": [[256, A]]}
    swept = {"4096,4096,0": [[128, None], [256, B]], "6144,4096,0": [[128, B], [256, None]]}
    merged = bench.merge_tables(base, swept)
    assert merged == {"4096,4096,0": [[32, None], [64, A], [128, None], [256, B]],
                      "1024,2048,0": [[256, A]], "6144,4096,0": [[128, B], [256, None]]}
    assert base["4096,4096,0"] == [[32, None], [64, A], [256, None]]   # base is not changed
