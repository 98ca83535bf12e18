"""Where a step's time goes: wall time per step against GPU kernel time (torch.profiler), and how much
of it the host spends waiting for the GPU (no profiler: `wait_per_step`)."""
from __future__ import annotations

import re
import time
from collections import Counter

import torch
from torch.profiler import ProfilerActivity, profile

from engine.pending_step import PendingStep


def _timed_parts(engine) -> dict:
    """(owner, attribute) of each host-side part of a step worth timing, by name."""
    runner = engine.runner
    parts = {"schedule": (engine.scheduler, "schedule"), "prepare_inputs": (runner.inputs, "prepare"),
             "compute_logits": (runner.model, "compute_logits"),
             "sampling_metadata": (runner, "_sampling_metadata"), "sampler": (runner, "sampler"),
             "update_from_output": (engine.scheduler, "update_from_output"),
             "process_tokens": (engine.outputs, "process_token"), "make_outputs": (engine.outputs, "make_outputs")}
    if runner.graphs is not None:
        parts["graph_run"] = (runner.graphs, "run")
    return parts


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

    parts = _timed_parts(engine)
    spent = dict.fromkeys(parts, 0.0)

    def timer(name, fn):
        def timed(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                spent[name] += time.perf_counter() - t0
        return timed

    PendingStep.result = timed_result
    patched = [(owner, attr, owner.__dict__.get(attr)) for owner, attr in parts.values()]
    for name, (owner, attr) in parts.items():
        setattr(owner, attr, timer(name, getattr(owner, attr)))
    try:
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(num_steps):
            engine.step()
        wall = time.perf_counter() - start
    finally:
        PendingStep.result = original
        for owner, attr, own_value in patched:
            if own_value is None:
                delattr(owner, attr)       # back to the class's method
            else:
                setattr(owner, attr, own_value)
    return {"wall_ms_per_step": round(1000 * wall / num_steps, 3),
            "gpu_wait_ms_per_step": round(1000 * waited / num_steps, 3),
            "host_ms_per_step": round(1000 * (wall - waited) / num_steps, 3),
            "host_parts_ms_per_step": {k: round(1000 * v / num_steps, 3) for k, v in spent.items()}}


def profile_calls(fn, path: str | None = None) -> dict:
    """Run fn() once under the profiler: wall ms, GPU busy ms, kernel launches, the ops with the most
    host time (self CPU ms) and the top kernels; the tables go to `path` if given."""
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        start = time.perf_counter()
        fn()
        torch.cuda.synchronize()
        wall = time.perf_counter() - start
    events = prof.key_averages()
    cuda = torch.autograd.DeviceType.CUDA
    kernels = [e for e in events if e.device_type == cuda and e.self_device_time_total > 0]
    host = sorted((e for e in events if e.device_type != cuda), key=lambda e: -e.self_cpu_time_total)[:12]
    if path:
        _write_tables(events, path)
    return {"wall_ms": round(1000 * wall, 3),
            "gpu_busy_ms": round(sum(e.self_device_time_total for e in kernels) / 1000, 3),
            "num_kernels": sum(e.count for e in kernels),
            "top_host_ms": {e.key[:60]: round(e.self_cpu_time_total / 1000, 3) for e in host},
            "top_kernels_ms": {e.key[:60]: round(e.self_device_time_total / 1000, 3)
                               for e in sorted(kernels, key=lambda e: -e.self_device_time_total)[:8]}}


def _write_tables(events, path: str) -> None:
    with open(path, "w") as f:
        f.write(events.table(sort_by="self_cuda_time_total", row_limit=40))
        f.write("\n\n")
        f.write(events.table(sort_by="self_cpu_time_total", row_limit=40))


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
    cuda = torch.autograd.DeviceType.CUDA
    gpu_us = sum(e.self_device_time_total for e in events if e.device_type == cuda)
    top = sorted((e for e in events if e.self_device_time_total > 0), key=lambda e: -e.self_device_time_total)[:12]
    if path:
        _write_tables(events, path)
    intervals = [(e.time_range.start, e.time_range.end, e.name) for e in prof.events() if e.device_type == cuda]
    return {"steps": num_steps, "wall_ms_per_step": round(1000 * wall / num_steps, 3),
            "gpu_busy_ms_per_step": round(gpu_us / 1000 / num_steps, 3),
            "top_kernels_ms_per_step": {e.key[:80]: round(e.self_device_time_total / 1000 / num_steps, 3) for e in top},
            "gaps": kernel_gaps(intervals, num_steps)}


def short_kernel_name(name: str) -> str:
    """A kernel's family: cuBLAS GEMMs as 'cublas' (`nvjet_*` on Hopper with CUDA 13, or a GEMM
    named for sm90 / cutlass / cublas), Triton kernels by function name, else 40 chars."""
    lower = name.lower()
    if lower.startswith("nvjet") or ("gemm" in lower and ("sm90" in name or "cutlass" in name or "cublas" in name)):
        return "cublas"
    return re.sub(r"[<(].*", "", name)[:40]


def kernel_gaps(intervals: list[tuple[float, float, str]], num_steps: int, top: int = 10) -> dict:
    """Idle GPU time between device activities (kernels and copies), from (start_us, end_us, name).

    Returns the idle ms per step, the number of activities per step, and the idle ms per step of the
    `top` (previous family -> next family) pairs with the most of it. Overlapping activities (other
    streams) count as busy."""
    spans = sorted(intervals)
    idle, count = Counter(), Counter()
    if not spans:
        return {"idle_ms_per_step": 0.0, "activities_per_step": 0.0, "by_pair": {}}
    busy_until, last = spans[0][1], spans[0][2]
    for start, end, name in spans[1:]:
        if start > busy_until:
            pair = f"{short_kernel_name(last)} -> {short_kernel_name(name)}"
            idle[pair] += start - busy_until
            count[pair] += 1
        if end >= busy_until:
            busy_until, last = end, name
    total = sum(idle.values())
    return {"idle_ms_per_step": round(total / 1000 / num_steps, 3),
            "activities_per_step": round(len(spans) / num_steps, 1),
            "by_pair": {pair: {"ms_per_step": round(us / 1000 / num_steps, 3), "per_step": round(count[pair] / num_steps, 1)}
                        for pair, us in idle.most_common(top)}}
