"""Once the engine is dead the server stops and `python -m engine.serve` exits 1 saying why (as vLLM's API
server, so that a supervisor restarts it); env ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH=1 (or vLLM's
VLLM_KEEP_ALIVE_ON_ENGINE_DEATH) keeps it answering 503."""
from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import time

import httpx
import pytest

from engine.async_engine import AsyncEngine, EngineDeadError
from engine.sampling_params import SamplingParams
from server.engine_watchdog import CUDA_ITERATION_TIMEOUT_S, iteration_timeout_s, keep_alive_on_engine_death, watch_engine
from server_harness import ServerThread, engine_config, free_port, start_serve, stop_serve


def test_keep_alive_env_vars_ours_and_vllms():
    assert not keep_alive_on_engine_death({})
    assert keep_alive_on_engine_death({"ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH": "1"})
    assert keep_alive_on_engine_death({"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "true"})
    assert not keep_alive_on_engine_death({"ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH": "0",
                                           "VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": ""})
    with pytest.raises(ValueError, match="VLLM_KEEP_ALIVE_ON_ENGINE_DEATH must be 1"):
        keep_alive_on_engine_death({"VLLM_KEEP_ALIVE_ON_ENGINE_DEATH": "maybe"})


def test_iteration_timeout_env_vars_and_device_defaults():
    assert iteration_timeout_s({}, "cuda") == CUDA_ITERATION_TIMEOUT_S
    assert iteration_timeout_s({}, "cpu") is None          # a CPU prefill step of a big model takes minutes
    assert iteration_timeout_s({"ENGINE_ITERATION_TIMEOUT_S": "30"}, "cpu") == 30.0
    assert iteration_timeout_s({"VLLM_ENGINE_ITERATION_TIMEOUT_S": "2.5"}, "cuda") == 2.5
    assert iteration_timeout_s({"ENGINE_ITERATION_TIMEOUT_S": "0", "VLLM_ENGINE_ITERATION_TIMEOUT_S": "9"},
                               "cuda") is None            # ours first; 0: no limit
    for bad in ("-1", "soon", "inf", "nan"):
        with pytest.raises(ValueError, match="ENGINE_ITERATION_TIMEOUT_S must be a number of seconds"):
            iteration_timeout_s({"ENGINE_ITERATION_TIMEOUT_S": bad}, "cuda")


def test_without_a_stall_timeout_a_slow_step_is_waited_for(tiny_model_path):
    engine = AsyncEngine(engine_config(tiny_model_path), stall_timeout_s=None)
    step = engine.engine.step
    engine.engine.step = lambda: time.sleep(0.3) or step()

    async def run() -> tuple[list[str], str]:
        deaths: list[str] = []
        watcher = asyncio.create_task(watch_engine(engine, deaths.append, interval_s=0.05, grace_s=0))
        text = ""
        async for out in engine.generate("slow", "slow", SamplingParams(max_tokens=3, temperature=0)):
            text = out.outputs[0].text
            assert engine.is_healthy()
        watcher.cancel()
        return deaths, text

    try:
        deaths, text = asyncio.run(run())
        assert deaths == [] and engine.is_alive() and text != ""
    finally:
        engine.shutdown()


def test_a_failed_step_reaches_the_app_watchdog_after_its_request_got_503(tiny_model_path):
    deaths: list[str] = []
    with ServerThread(engine_config(tiny_model_path), on_engine_death=deaths.append) as srv:
        def broken_step():
            raise RuntimeError("device lost")

        srv.async_engine.engine.step = broken_step
        body = {"model": "tiny-qwen3", "prompt": "doomed", "max_tokens": 4}
        resp = httpx.post(f"{srv.base_url}/v1/completions", json=body, timeout=30)
        assert resp.status_code == 503 and "device lost" in resp.json()["error"]["message"]
        deadline = time.monotonic() + 5
        while not deaths and time.monotonic() < deadline:
            time.sleep(0.05)
    assert deaths == ["RuntimeError: device lost"]


def test_a_stalled_step_is_declared_dead_failing_its_requests(tiny_model_path):
    engine = AsyncEngine(engine_config(tiny_model_path), stall_timeout_s=0.3)
    engine.engine.step = lambda: time.sleep(1.0) or []

    async def run() -> list[str]:
        deaths: list[str] = []
        watcher = asyncio.create_task(watch_engine(engine, deaths.append, interval_s=0.05, grace_s=0))
        await asyncio.sleep(0.2)
        assert not deaths                      # an idle engine is alive
        stream = await engine.add_request("slow", "slow", SamplingParams(max_tokens=2))
        with pytest.raises(EngineDeadError, match="the engine is stalled"):
            await asyncio.wait_for(anext(stream), 5)
        await asyncio.wait_for(watcher, 5)
        return deaths

    try:
        deaths = asyncio.run(run())
        assert len(deaths) == 1 and "stall timeout 0.3 s" in deaths[0]
        assert not engine.is_alive() and not engine.is_healthy()
    finally:
        engine.shutdown()


def _engine_pid(server_pid: int) -> int:
    """The engine process: the server's child started by multiprocessing's spawn."""
    pids = subprocess.run(["pgrep", "-P", str(server_pid), "-f", "spawn_main"], capture_output=True,
                          text=True).stdout.split()
    assert len(pids) == 1, pids
    return int(pids[0])


def test_serve_exits_1_naming_the_death_once_the_engine_process_is_killed():
    """A stream in flight gets the error in-band, then the server stops by itself."""
    port = free_port()
    proc = start_serve(port, "--max-model-len", "2048", "--num-kv-blocks", "160")
    body = {"prompt": "hi", "max_tokens": 2000, "ignore_eos": True, "stream": True}
    try:
        with httpx.stream("POST", f"http://127.0.0.1:{port}/v1/completions", json=body, timeout=60) as resp:
            lines = resp.iter_lines()
            next(line for line in lines if line.startswith("data: "))
            os.kill(_engine_pid(proc.pid), signal.SIGKILL)
            events = [line for line in lines if line.startswith("data: ")]
        assert proc.wait(30) == 1
    finally:
        output = stop_serve(proc)
    assert events[-1] == "data: [DONE]" and "the engine process exited (exit code -9)" in events[-2]
    assert "the engine died (EngineDeadError: the engine process exited (exit code -9))" in output, output


def test_keep_alive_env_keeps_serving_503_once_the_engine_process_is_killed():
    port = free_port()
    proc = start_serve(port, "--max-model-len", "512", "--num-kv-blocks", "32",
                       env={"ENGINE_KEEP_ALIVE_ON_ENGINE_DEATH": "1"})
    health = f"http://127.0.0.1:{port}/health"
    try:
        os.kill(_engine_pid(proc.pid), signal.SIGKILL)
        deadline = time.monotonic() + 10
        while httpx.get(health, timeout=5).status_code != 503:
            assert time.monotonic() < deadline, "/health did not turn 503"
            time.sleep(0.1)
        time.sleep(2.5)                        # past the watchdog's interval and grace
        assert proc.poll() is None
        resp = httpx.get(health, timeout=5)
        assert resp.status_code == 503 and "exit code -9" in resp.json()["error"]["message"]
    finally:
        stop_serve(proc)
    assert proc.returncode == 0
