"""The offline benchmarks run end to end on the CPU (tiny model) and draw the documented workload."""
import argparse
import json

import pytest

from engine.bench import latency, throughput


def _args(module, argv):
    parser = argparse.ArgumentParser()
    module.add_args(parser)
    return parser.parse_args(argv)


def test_throughput_workload_is_nano_vllms():
    """The default draw is nano-vllm bench.py's: its published totals, ids in [0, 10000]."""
    prompts, output_lens = throughput.workload(256, (100, 1024), (100, 1024), 10000, seed=0)
    assert sum(map(len, prompts)) == 142827 and sum(output_lens) == 133966
    assert all(0 <= t <= 10000 for p in prompts for t in p) and min(output_lens) >= 100


def test_longest_output_first_sorts_requests_with_their_prompts():
    prompts, output_lens = throughput.workload(50, (4, 12), (2, 90), 511, seed=1)
    sorted_prompts, sorted_lens = throughput.ordered(prompts, output_lens, "longest-output-first")
    assert sorted_lens == sorted(output_lens, reverse=True)
    assert sorted(zip(map(tuple, sorted_prompts), sorted_lens)) == sorted(zip(map(tuple, prompts), output_lens))
    assert throughput.ordered(prompts, output_lens, "as-drawn") == (prompts, output_lens)
    with pytest.raises(ValueError, match="order must be one of"):
        throughput.ordered(prompts, output_lens, "shortest")


def test_throughput_and_latency_run_on_cpu(tmp_path):
    out = tmp_path / "thr.json"
    result = throughput.main(_args(throughput, ["--model", "preset:tiny-qwen3", "--num-prompts", "6",
                                                "--input-len", "4", "12", "--output-len", "2", "9", "--repeat", "2",
                                                "--output", str(out), "--timeline"]))
    prompts, output_lens = throughput.workload(6, (4, 12), (2, 9), 511, seed=0)   # tiny vocab: 512 ids
    expected = sum(output_lens)
    assert result["output_tok_per_s"] > 0 and result["output_tokens"] == expected
    timeline = result["timeline"]   # every step of the last run is in one group; decode steps sample one token each
    assert timeline["prefill"]["steps"] >= 1
    num_decode = sum(g["steps"] * g["mean_decode_batch"] for name, g in timeline.items() if name != "prefill")
    assert round(num_decode) + timeline["prefill"]["mean_decode_batch"] * timeline["prefill"]["steps"] \
        == pytest.approx(expected - len(prompts), abs=0.5)
    last_run_s = expected / result["runs_output_tok_per_s"][-1]
    assert sum(g["wall_s"] for g in timeline.values()) <= last_run_s * 1.01 + 1e-3 and all(
        g["kv_floor_s"] > 0 and g["weight_floor_s"] > 0 for g in timeline.values())
    assert len(result["runs_output_tok_per_s"]) == 2
    assert json.loads(out.read_text())["output_tokens"] == expected
    lat = latency.main(_args(latency, ["--model", "preset:tiny-qwen3", "--input-len", "8", "--output-len", "6",
                                       "--iters", "1"]))
    assert lat["ms_per_token"] > 0 and lat["output_len"] == 6


def test_wait_per_step_times_host_parts_and_restores_them():
    from engine import LLM, SamplingParams
    from engine.bench.step_profile import wait_per_step

    llm = LLM("preset:tiny-qwen3")
    engine = llm.engine
    sampler, schedule = engine.runner.sampler, engine.scheduler.schedule
    engine.add_request("a", [1, 2, 3], SamplingParams(max_tokens=20, ignore_eos=True))
    result = wait_per_step(engine, 5)
    parts = result["host_parts_ms_per_step"]
    assert parts["schedule"] > 0 and parts["sampler"] > 0 and result["wall_ms_per_step"] > 0
    assert engine.runner.sampler is sampler and engine.scheduler.schedule == schedule
    assert "schedule" not in vars(engine.scheduler)


def test_kernel_gaps_sum_idle_time_between_activities_by_family():
    from engine.bench.step_profile import kernel_gaps

    gemm = "sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x256x64_cublas"
    spans = [(0.0, 10.0, gemm), (12.0, 20.0, "_decode_kernel"), (19.0, 30.0, "copy"),   # overlap: no gap
             (31.5, 40.0, gemm), (45.0, 50.0, "_decode_kernel")]
    gaps = kernel_gaps(spans, num_steps=2)
    assert gaps["idle_ms_per_step"] == pytest.approx((2.0 + 1.5 + 5.0) / 1000 / 2, abs=1e-3)
    assert gaps["activities_per_step"] == 2.5
    pairs = gaps["by_pair"]
    assert pairs["cublas -> _decode_kernel"]["ms_per_step"] == pytest.approx(7.0 / 1000 / 2, abs=1e-3)
    assert pairs["cublas -> _decode_kernel"]["per_step"] == 1.0
    assert pairs["copy -> cublas"]["per_step"] == 0.5
    assert kernel_gaps([], 1)["idle_ms_per_step"] == 0.0
    nvjet = "nvjet_sm90_tst_128x64_64x8_1x2_h_bz_TNT"   # cuBLAS's kernels on the H100 (CUDA 13)
    assert "cublas -> _rms_norm_kernel" in kernel_gaps([(0.0, 1.0, nvjet), (2.0, 3.0, "_rms_norm_kernel")], 1)["by_pair"]


def test_tunableop_bench_takes_the_projection_shapes_of_a_preset():
    from engine.bench.tunableop import projection_shapes
    from models.presets import PRESETS

    assert projection_shapes(PRESETS["qwen3-8b"]()) == {
        "qkv": (6144, 4096), "o": (4096, 4096), "gate_up": (24576, 4096), "down": (4096, 12288),
        "lm_head": (151936, 4096)}
