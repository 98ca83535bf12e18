"""Where a step's time goes: wall time per step against GPU kernel time (torch.profiler), and how much
of it the host spends waiting for the GPU (no profiler: `wait_per_step`)."""
from __future__ import annotations

import time

import torch
from torch.profiler import ProfilerActivity, profile

from engine.pending_step import PendingStep


def wait_per_step(engine, num_steps: int) -> dict:
    """Run `num_steps` steps; wall ms/step and the ms/step the host blocks on the GPU's results.

    With async scheduling, a wait near zero means the host is the bottleneck (the GPU idles between
    steps); a large wait means the GPU is (host work is hidden behind it)."""
    waited = 0.0
    original = PendingStep.result

    def timed_result(self):
        nonlocal waited
        if self.event is not None:
            t0 = time.perf_counter()
            self.event.synchronize()
            waited += time.perf_counter() - t0
        return original(self)

    PendingStep.result = timed_result
    try:
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(num_steps):
            engine.step()
        wall = time.perf_counter() - start
    finally:
        PendingStep.result = original
    return {"wall_ms_per_step": round(1000 * wall / num_steps, 3),
            "gpu_wait_ms_per_step": round(1000 * waited / num_steps, 3),
            "host_ms_per_step": round(1000 * (wall - waited) / num_steps, 3)}


def profile_steps(engine, num_steps: int, path: str | None = None) -> dict:
    """Run `num_steps` engine steps under the profiler. Returns wall ms/step, GPU busy ms/step, and
    the top kernels; writes the profiler's table to `path` if given."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        for _ in range(num_steps):
            engine.step()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == torch.autograd.DeviceType.CUDA)
    top = sorted((e for e in events if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)[:12]
    if path:
        with open(path, "w") as f:
            f.write(events.table(sort_by="self_cuda_time_total", row_limit=40))
            f.write("\n\n")
            f.write(events.table(sort_by="self_cpu_time_total", row_limit=40))
    return {"steps": num_steps, "wall_ms_per_step": round(1000 * wall / num_steps, 3),
            "gpu_busy_ms_per_step": round(gpu_us / 1000 / num_steps, 3),
            "top_kernels_ms_per_step": {e.key[:80]: round(e.self_device_time_total / 1000 / num_steps, 3) for e in top}}
