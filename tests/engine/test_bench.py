"""The offline benchmarks run end to end on the CPU (tiny model) and draw the documented workload."""
import argparse
import json

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


def test_throughput_and_latency_run_on_cpu(tmp_path):
    out = tmp_path / "thr.json"
    result = throughput.main(_args(throughput, ["--model", "preset:tiny-qwen3", "--num-prompts", "6",
                                                "--input-len", "4", "12", "--output-len", "2", "9", "--repeat", "2",
                                                "--output", str(out)]))
    expected = sum(throughput.workload(6, (4, 12), (2, 9), 511, seed=0)[1])   # tiny vocab: 512 ids
    assert result["output_tokens"] == expected and result["output_tok_per_s"] > 0
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
