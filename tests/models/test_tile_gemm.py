"""The tile GEMM (models/layers/ops/tile_gemm.py) against float64 math, its config table (config_for,
winning_config, ENGINE_TILE_GEMM_CONFIGS) and the dispatch thresholds in models/layers/ops (tile_config, linear,
linear_silu_and_mul).

Without a GPU the kernel runs in Triton's interpreter on CPU tensors (TRITON_INTERPRET is set before
the kernel module is first loaded, as in test_skinny_gemm.py), so the shapes stay small.
"""
import json
import os
from types import SimpleNamespace

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from models.layers import ops  # noqa: E402
from models.layers.ops import load  # noqa: E402
from tests.models.gemm_reference import gemm_inputs as _inputs  # noqa: E402
from tests.models.gemm_reference import reference as _reference  # noqa: E402
from tests.models.gemm_reference import silu_reference as _silu_reference  # noqa: E402

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"
CUDA = torch.device("cuda")   # config_for only looks at device.type: no GPU is touched
SHAPES = [(48, 64), (40, 96), (24, 50)]   # (N, K): ragged N for 16-wide tiles, and a ragged K (50)


def _tol(dtype):
    return dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-2)


@pytest.fixture
def tile():
    return load("tile_gemm")


@pytest.fixture
def table_file(tmp_path, monkeypatch, tile):
    """Writes {"N,K,silu": [[largest M, config or None], ...]} to a file that ENGINE_TILE_GEMM_CONFIGS
    names; _file_configs' cache is cleared around the test."""
    def write(table):
        path = tmp_path / "tile_configs.json"
        path.write_text(json.dumps(table))
        monkeypatch.setenv("ENGINE_TILE_GEMM_CONFIGS", str(path))
        tile._file_configs.cache_clear()
        return path

    tile._file_configs.cache_clear()
    yield write
    tile._file_configs.cache_clear()


# ---- the kernel against float64 math ----

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows", [17, 40, 64])
@pytest.mark.parametrize("n,k", SHAPES)
@pytest.mark.parametrize("with_bias", [False, True])
def test_tile_gemm_matches_float64(num_rows, n, k, dtype, with_bias, tile):
    x, weight, bias = _inputs(num_rows, n, k, dtype, with_bias, seed=num_rows * n + k)
    out = tile.tile_gemm(x, weight, bias)
    assert out.shape == (num_rows, n) and out.dtype == dtype
    torch.testing.assert_close(out.double(), _reference(x, weight, bias).to(DEVICE), **_tol(dtype))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("num_rows,n,k", [(17, 48, 64), (40, 40, 96), (64, 24, 50)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_tile_gemm_silu_matches_unfused(num_rows, n, k, dtype, with_bias, tile):
    """silu=True on a merged [gate | up] weight [2N, K]: silu(gate) * up [M, N], rounded like the
    unfused path (the projection, then SiLU-and-mul)."""
    x, weight, bias = _inputs(num_rows, 2 * n, k, dtype, with_bias, seed=num_rows + n + k)
    out = tile.tile_gemm(x, weight, bias, silu=True)
    assert out.shape == (num_rows, n) and out.dtype == dtype
    unfused = ops.silu_and_mul_native(tile.tile_gemm(x, weight, bias))
    torch.testing.assert_close(out, unfused, **_tol(dtype))
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=5e-2, atol=5e-2)  # 2 roundings
    torch.testing.assert_close(out.double(), _silu_reference(x, weight, bias, dtype).to(DEVICE), **tol)


@pytest.mark.parametrize("silu", [False, True])
def test_tile_gemm_other_tile_shapes(tile, silu):
    """The CUDA fallback tiles (default_config: 64-row tiles, BLOCK_K 64) and a 32 x 32 x 16 tile,
    forced, on a ragged M, N and K."""
    x, weight, bias = _inputs(40, 2 * 24 if silu else 24, 50, torch.float32, True, seed=3)
    want = _silu_reference(x, weight, bias, torch.float32) if silu else _reference(x, weight, bias)
    for cfg in (tile.default_config(40, 24, 50, silu),
                dict(BLOCK_M=32, BLOCK_N=32, BLOCK_K=16, num_warps=4, num_stages=1)):
        out = tile.tile_gemm(x, weight, bias, config=cfg, silu=silu)
        torch.testing.assert_close(out.double(), want.to(DEVICE), rtol=1e-4, atol=1e-4)


def test_tile_gemm_empty_batch(tile):
    out = tile.tile_gemm(torch.zeros(0, 64, device=DEVICE), torch.zeros(48, 64, device=DEVICE))
    assert out.shape == (0, 48)


def test_tile_gemm_rejects_bad_input(tile):
    weight = torch.zeros(48, 32, device=DEVICE)
    with pytest.raises(ValueError, match="M <= 256"):
        tile.tile_gemm(torch.zeros(tile.MAX_ROWS + 1, 32, device=DEVICE), weight)
    with pytest.raises(ValueError, match="got \\(20, 16\\)"):
        tile.tile_gemm(torch.zeros(20, 16, device=DEVICE), weight)
    with pytest.raises(ValueError, match="even number of rows, got 47"):
        tile.tile_gemm(torch.zeros(20, 32, device=DEVICE), weight[1:], silu=True)
    with pytest.raises(ValueError, match="unit last stride"):
        tile.tile_gemm(torch.zeros(20, 64, device=DEVICE)[:, ::2], weight)
    with pytest.raises(ValueError, match="unit last stride"):
        tile.tile_gemm(torch.zeros(20, 32, device=DEVICE), torch.zeros(48, 64, device=DEVICE)[:, ::2])


@pytest.mark.parametrize("silu", [False, True])
def test_tile_gemm_raises_where_the_table_says_cublas(monkeypatch, tile, silu):
    """A None config (cuBLAS won at that shape) is an error, not a silent fallback; config_for is asked
    with the output's N (half the gate_up rows with silu)."""
    asked = []
    monkeypatch.setattr(tile, "config_for", lambda *a: asked.append(a) or None)
    x, weight, _ = _inputs(20, 48, 32, torch.float32, False, seed=1)
    with pytest.raises(ValueError, match="no tile config for M=20"):
        tile.tile_gemm(x, weight, silu=silu)
    assert asked == [(20, 24 if silu else 48, 32, silu, x.device)]


# ---- config_for and wins ----

def test_config_for_cpu_is_the_cpu_config(tile, table_file):
    """Off CUDA the table (here: null everywhere) is not read; the config is a copy of CPU_CONFIG."""
    table_file({"48,64,0": [[256, None]]})
    cfg = tile.config_for(40, 48, 64, False, torch.device("cpu"))
    assert cfg == tile.CPU_CONFIG and cfg is not tile.CPU_CONFIG
    assert tile.config_for(40, 48, 64, False, CUDA) is None   # the same table on CUDA
    cfg["BLOCK_M"] = 1
    assert tile.config_for(40, 48, 64, False, torch.device("cpu"))["BLOCK_M"] == tile.CPU_CONFIG["BLOCK_M"]


def test_config_for_reads_the_table_file(tile, table_file):
    small = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=128, num_warps=4, num_stages=5)
    big = dict(BLOCK_M=128, BLOCK_N=128, BLOCK_K=64, num_warps=8, num_stages=3)
    fused = dict(BLOCK_M=32, BLOCK_N=64, BLOCK_K=64, num_warps=4, num_stages=2)
    table_file({"48,64,0": [[32, small], [64, None], [128, big]], "40,96,1": [[256, fused]]})
    config_for = tile.config_for
    for m in (17, 32):
        assert config_for(m, 48, 64, False, CUDA) == small
    for m in (33, 64):
        assert config_for(m, 48, 64, False, CUDA) is None
    for m in (65, 128):
        assert config_for(m, 48, 64, False, CUDA) == big
    assert config_for(129, 48, 64, False, CUDA) is None   # past the last bucket: cuBLAS
    # a shape (silu included) the table does not hold: the default tiles, for direct callers
    assert config_for(40, 48, 64, True, CUDA) == tile.default_config(40, 48, 64, True)
    assert config_for(40, 40, 96, False, CUDA) == tile.default_config(40, 40, 96, False)
    assert config_for(40, 48, 96, False, CUDA) == tile.default_config(40, 48, 96, False)
    assert config_for(200, 40, 96, True, CUDA) == fused
    # a copy each time
    config_for(17, 48, 64, False, CUDA)["BLOCK_N"] = 1
    assert config_for(17, 48, 64, False, CUDA) == small


QWEN3_0_6B = {"qkv": (4096, 1024, 0), "o": (1024, 2048, 0), "gate_up silu": (3072, 1024, 1),
             "down": (1024, 3072, 0), "lm_head": (151936, 1024, 0)}


def test_builtin_table_by_device_name(monkeypatch, tile):
    """Without ENGINE_TILE_GEMM_CONFIGS an H100 reads the shipped table; another GPU has none, so
    `winning_config` leaves every projection to cuBLAS."""
    monkeypatch.delenv("ENGINE_TILE_GEMM_CONFIGS", raising=False)
    monkeypatch.setattr(tile, "_device_name", lambda index: "NVIDIA H100 80GB HBM3")
    table = tile.device_table(CUDA)
    assert set(QWEN3_0_6B.values()) <= set(table)
    x = SimpleNamespace(shape=(128, 1024), device=CUDA)
    assert tile.winning_config(x, torch.zeros(3072 * 2, 1024), silu=True) == dict(table[(3072, 1024, 1)][1][1])
    assert tile.config_for(128, 3072, 1024, True, CUDA) == dict(table[(3072, 1024, 1)][1][1])
    monkeypatch.setattr(tile, "_device_name", lambda index: "NVIDIA A100-SXM4-80GB")
    assert tile.device_table(CUDA) == {}
    assert tile.winning_config(x, torch.zeros(3072 * 2, 1024), silu=True) is None


def test_shipped_tables_are_well_formed(tile):
    """Each shipped table: increasing M buckets ending at MAX_ROWS, configs whose tiles fit in shared
    memory, and (the H100's) a config somewhere for every Qwen3-0.6B projection."""
    keys = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "num_warps", "num_stages")
    for file in tile.DEVICE_TABLES.values():
        table = tile._file_configs(os.path.join(os.path.dirname(tile.__file__), file))
        for (n, k, silu), buckets in table.items():
            rows = [m for m, _ in buckets]
            assert rows == sorted(set(rows)) and rows[-1] == tile.MAX_ROWS, (n, k, silu)
            for _, cfg in buckets:
                if cfg is not None:
                    assert set(cfg) == set(keys)
                    weight_rows = cfg["BLOCK_N"] * (2 if silu else 1)
                    smem = (cfg["BLOCK_M"] + weight_rows) * cfg["BLOCK_K"] * 2 * cfg["num_stages"]
                    assert smem <= tile.SHARED_MEMORY_BYTES, (n, k, silu, cfg)
    h100 = tile._file_configs(os.path.join(os.path.dirname(tile.__file__), tile.DEVICE_TABLES["H100"]))
    for name, shape in QWEN3_0_6B.items():
        assert any(cfg is not None for _, cfg in h100[shape]), name


def test_default_config_by_rows(tile):
    """64-row tiles up to 64 rows, 128 above; one stage less with SiLU's two weight tiles."""
    assert [tile.default_config(m, 48, 64)["BLOCK_M"] for m in (17, 64, 65, 256)] == [64, 64, 128, 128]
    assert tile.default_config(40, 48, 64, True)["num_stages"] == tile.default_config(40, 48, 64)["num_stages"] - 1


def test_winning_config_follows_the_table(tile, table_file):
    """winning_config: the table's config for x's rows and the weight's (half with silu) shape, else None."""
    cfg = dict(BLOCK_M=16, BLOCK_N=32, BLOCK_K=64, num_warps=4, num_stages=3)
    table_file({"48,64,0": [[32, cfg], [64, None]], "24,64,1": [[32, None]]})

    def x(m, device=CUDA):   # it only reads x.shape and x.device: a stand-in keeps the GPU untouched
        return SimpleNamespace(shape=(m, 64), device=device)

    weight = torch.zeros(48, 64)
    assert tile.winning_config(x(20), weight) == cfg                          # a table entry
    assert tile.winning_config(x(40), weight) is None                         # None: cuBLAS won
    assert tile.winning_config(x(65), weight) is None                         # past the table
    assert tile.winning_config(x(20), torch.zeros(48, 32)) is None            # a shape the table does not hold
    assert tile.winning_config(x(20), weight, silu=True) is None              # "24,64,1": gate_up of 2 x 24 rows
    assert tile.winning_config(x(40), weight, silu=True) is None              # past its last bucket
    assert tile.winning_config(x(40, torch.device("cpu")), weight) == tile.CPU_CONFIG   # the CPU's one config


# ---- the dispatch ----

def test_tile_config_is_none_on_cpu_tensors(monkeypatch):
    monkeypatch.setattr(ops, "TILE_MAX_ROWS", 256)
    x, weight = torch.zeros(40, 64), torch.zeros(48, 64)
    assert not ops.use_fused(x)
    assert ops.tile_config(x, weight) is None and ops.tile_config(x, torch.zeros(96, 64), silu=True) is None


def test_tile_config_thresholds(monkeypatch, tile):
    monkeypatch.setattr(ops, "use_fused", lambda x: True)
    monkeypatch.setattr(ops, "SKINNY_MAX_ROWS", 16)
    monkeypatch.setattr(ops, "TILE_MAX_ROWS", 256)
    weight = torch.zeros(48, 8)
    taken = [m for m in (1, 8, 16, 17, 64, 255, 256, 257, 1024) if ops.tile_config(torch.zeros(m, 8), weight)]
    assert taken == [17, 64, 255, 256]
    assert ops.tile_config(torch.zeros(2, 20, 8), weight) is None   # not a 2-D x
    asked = []
    monkeypatch.setattr(tile, "winning_config", lambda x, w, silu=False: asked.append((x.shape[0], silu)) or None)
    assert ops.tile_config(torch.zeros(40, 8), weight, silu=True) is None    # the table says cuBLAS
    assert asked == [(40, True)]
    monkeypatch.setattr(ops, "TILE_MAX_ROWS", 0)   # ENGINE_TILE_GEMM_MAX_ROWS=0: off
    monkeypatch.setattr(tile, "winning_config", lambda x, w, silu=False: {"BLOCK_M": 16})
    assert not any(ops.tile_config(torch.zeros(m, 8), weight) for m in (17, 64, 256))


@pytest.mark.parametrize("path", ["skinny", "tile", "torch"])
def test_linear_dispatch(monkeypatch, tile, path):
    """ops.linear and ops.linear_silu_and_mul: the skinny GEMM first, then the tile GEMM, else torch;
    each equals float64 math."""
    x, weight, bias = _inputs(20, 48, 32, torch.float32, True, seed=11)
    calls = []
    tile_gemm = tile.tile_gemm
    monkeypatch.setattr(ops, "use_skinny", lambda x, w: path == "skinny")
    monkeypatch.setattr(ops, "tile_config", lambda x, w, silu=False: dict(tile.CPU_CONFIG) if path == "tile" else None)
    skinny_gemm = load("skinny_gemm").skinny_gemm
    monkeypatch.setattr(load("skinny_gemm"), "skinny_gemm", lambda *a, **k: calls.append(("skinny", k)) or
                        skinny_gemm(*a, **k))
    monkeypatch.setattr(tile, "tile_gemm", lambda *a, **k: calls.append(("tile", k)) or tile_gemm(*a, **k))
    out = ops.linear(x, weight, bias)
    torch.testing.assert_close(out.double(), _reference(x, weight, bias), rtol=1e-4, atol=1e-4)
    fused = ops.linear_silu_and_mul(x, weight, bias)
    torch.testing.assert_close(fused.double(), _silu_reference(x, weight, bias, torch.float32),
                               rtol=1e-4, atol=1e-4)
    silu_kwargs = {"silu": True} if ops.SKINNY_SILU_ENABLED else {}
    expected = {"skinny": [("skinny", {}), ("skinny", silu_kwargs)],
                "tile": [("tile", {"config": tile.CPU_CONFIG}), ("tile", {"config": tile.CPU_CONFIG, **silu_kwargs})],
                "torch": []}[path]
    assert calls == expected
