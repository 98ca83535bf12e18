"""`python -m engine.serve`: flags become an EngineConfig; bad flags exit 2; the real process serves."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from engine.serve import build_parser, config_from_args
from server_harness import free_port, start_serve, stop_serve

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_flags_map_to_engine_config():
    args = build_parser().parse_args(["--model", "preset:tiny-qwen3", "--max-model-len", "256", "--max-num-seqs", "4",
                                      "--block-size", "32", "--num-kv-blocks", "64", "--no-enable-prefix-caching",
                                      "--enforce-eager", "--dtype", "float32", "--load-format", "dummy",
                                      "--max-queue-len", "3", "--seed", "5", "--gpu-memory-utilization", "0.5",
                                      "--attention-backend", "torch_ref"])
    config = config_from_args(args)
    assert (config.max_model_len, config.max_num_seqs, config.block_size, config.num_kv_blocks) == (256, 4, 32, 64)
    assert not config.enable_prefix_caching and config.enforce_eager and config.max_queue_len == 3
    assert (config.dtype, config.load_format, config.seed, config.attention_backend) == ("float32", "dummy", 5,
                                                                                          "torch_ref")
    assert config.gpu_memory_utilization == 0.5
    defaults = build_parser().parse_args(["--model", "m"])
    assert (defaults.host, defaults.port, defaults.enable_prefix_caching) == (None, 8000, True)   # None: every interface


def test_the_model_is_positional_as_vllm_serve_or_a_flag():
    assert config_from_args(build_parser().parse_args(["preset:tiny-qwen3"])).model == "preset:tiny-qwen3"
    assert config_from_args(build_parser().parse_args(["m", "--model", "m", "--port", "9"])).model == "m"
    assert config_from_args(build_parser().parse_args(["a", "--model", "b"])).model == "a"     # vLLM's rule
    with pytest.raises(ValueError, match="name the model to serve"):
        config_from_args(build_parser().parse_args([]))


def test_no_model_exits_2_saying_how_to_name_it():
    proc = subprocess.run([sys.executable, "-m", "engine.serve", "--port", "8001"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 2 and "python -m engine.serve MODEL" in proc.stderr


@pytest.mark.parametrize("flags,field", [(["--max-num-seqs", "0"], "max_num_seqs"), (["--dtype", "fp7"], "dtype"),
                                         (["--gpu-memory-utilization", "1.5"], "gpu_memory_utilization"),
                                         (["--hf-overrides", "{rope"], "--hf-overrides: not valid JSON"),
                                         (["--hf-overrides", "[1]"], "--hf-overrides: must be a JSON object"),
                                         (["--max-model-len", "2.5k7"], "--max-model-len: must be an integer"),
                                         (["--max-model-len", "1.0001k"], "must come to a whole number"),
                                         (["--max-model-len", "1.5K"], "no decimals with K"),
                                         (["--tensor-parallel-size", "2"], "tensor_parallel_size")])
def test_invalid_flags_exit_2_naming_the_field(flags, field):
    proc = subprocess.run([sys.executable, "-m", "engine.serve", "--model", "preset:tiny-qwen3", *flags],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert field in proc.stderr


@pytest.mark.parametrize("engine_flag", ["--engine-process", "--no-engine-process"])
def test_an_engine_that_cannot_start_exits_2_saying_why(engine_flag):
    """A KV cache too small for max_model_len is found by the engine's start-up (in its own process by
    default): the server exits 2 with the engine's message, not a hang."""
    proc = subprocess.run([sys.executable, "-m", "engine.serve", "--model", "preset:tiny-qwen3", "--device", "cpu",
                           "--dtype", "float32", "--max-model-len", "128", "--block-size", "16", "--num-kv-blocks",
                           "2", engine_flag], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "fewer than one request of max_model_len=128 needs: lower max_model_len (to at most 32 here)" in proc.stderr


@pytest.mark.parametrize("text,tokens", [("32768", 32768), ("32k", 32000), ("32K", 32768), ("25.6k", 25600),
                                         ("1M", 1048576), ("auto", -1), ("-1", -1)])
def test_max_model_len_takes_vllm_human_readable_sizes(text, tokens):
    assert config_from_args(build_parser().parse_args(["m", "--max-model-len", text])).max_model_len == tokens


def test_vllm_flags_for_remote_code_one_gpu_and_model_names():
    config = config_from_args(build_parser().parse_args(["m", "--trust-remote-code", "-tp", "1"]))
    assert config.trust_remote_code
    assert not config_from_args(build_parser().parse_args(["m"])).trust_remote_code
    assert build_parser().parse_args(["m", "--served-model-name", "a", "b"]).served_model_name == ["a", "b"]


def test_hf_overrides_flag_maps_to_engine_config():
    overrides = '{"rope_parameters": {"rope_type": "yarn", "factor": 4.0}, "max_position_embeddings": 64}'
    config = config_from_args(build_parser().parse_args(["m", "--hf-overrides", overrides]))
    assert config.hf_overrides == {"rope_parameters": {"rope_type": "yarn", "factor": 4.0},
                                   "max_position_embeddings": 64}


def test_max_model_len_past_the_positions_exits_2_naming_hf_overrides():
    """The engine's start-up refuses it in its own process; the server passes the message on."""
    proc = subprocess.run([sys.executable, "-m", "engine.serve", "preset:tiny-qwen3", "--device", "cpu",
                           "--dtype", "float32", "--max-model-len", "4096", "--num-kv-blocks", "512"],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert "max_model_len=4096 is more than this model's positions cover (2048" in proc.stderr
    assert "--hf-overrides" in proc.stderr


def test_serve_process_answers_with_env_api_key():
    """Also takes --hf-overrides (a yarn rope: the context doubles to 256) into the engine's process."""
    port = free_port()
    env = dict(os.environ, ENGINE_API_KEY="cli-secret")
    overrides = ('{"max_position_embeddings": 128, "rope_parameters": {"rope_type": "yarn", "factor": 2.0, '
                 '"original_max_position_embeddings": 128}}')
    cmd = [sys.executable, "-m", "engine.serve", "--model", "preset:tiny-qwen3", "--port", str(port),
           "--served-model-name", "cli-model", "--hf-overrides", overrides, "--num-kv-blocks", "32", "--device", "cpu",
           "--dtype", "float32", "--log-level", "warning"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "server did not come up"
            time.sleep(0.2)
        auth = {"Authorization": "Bearer cli-secret"}
        assert httpx.get(f"{base}/v1/models").status_code == 401
        card = httpx.get(f"{base}/v1/models", headers=auth).json()["data"][0]
        assert (card["id"], card["max_model_len"]) == ("cli-model", 256)
        resp = httpx.post(f"{base}/v1/completions", headers=auth, timeout=60,
                          json={"model": "cli-model", "prompt": "hi", "max_tokens": 3, "ignore_eos": True})
        assert resp.status_code == 200 and resp.json()["usage"]["completion_tokens"] == 3
    finally:
        stop_serve(proc)


def test_sigterm_stops_the_server_at_once_cutting_streams_in_flight():
    """As vLLM's: a stream of 2,000 tokens is cut, not waited for (uvicorn's graceful shutdown waited for
    every open stream), and the process exits cleanly."""
    port = free_port()
    proc = start_serve(port, "--max-model-len", "2048", "--num-kv-blocks", "160")
    body = {"prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    events = []
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as resp:
            lines = resp.iter_lines()
            events.append(next(line for line in lines if line.startswith("data: ")))
            proc.send_signal(signal.SIGTERM)
            try:
                events += [line for line in lines if line.startswith("data: ")]
            except httpx.HTTPError:
                pass                                   # the connection cut mid-body
        assert proc.wait(30) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert "data: [DONE]" not in events and len(events) < 1000
