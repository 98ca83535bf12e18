"""Where a whole benchmark run's wall time goes, step by step, against its byte floors.

`StepTimeline` records, for every engine step, what was scheduled (prefill tokens, decoding
requests, their context lengths) and the wall time until the next step is scheduled. `summary()`
groups the steps (any prefill; then decode-only steps by batch size) and sets beside each group the
time its KV cache and weight reads alone would take at the card's bandwidth: a group far above its
floor is where a run loses time. With async scheduling a step's wall interval is mostly the GPU
time of the step launched before it; neighbours are alike, so group sums hold.
"""
from __future__ import annotations

import time

from engine.kv_sizing import bytes_per_block

BUCKETS = ((1, 16), (17, 64), (65, 128), (129, 192), (193, 10**9))   # decode batch sizes, inclusive


class StepTimeline:
    """Context manager that wraps `engine.scheduler.schedule` for the duration of a run."""

    def __init__(self, engine, bandwidth: float = 3.04e12) -> None:
        self.engine, self.bandwidth = engine, bandwidth
        self.steps: list[tuple[float, int, int, int]] = []   # (start s, prefill tokens, decode reqs, context tokens)
        self._schedule = None

    def __enter__(self) -> "StepTimeline":
        scheduler = self.engine.scheduler
        self._schedule = scheduler.schedule

        def schedule():
            out = self._schedule()
            prefill = sum(s.num_new_tokens for s in out.scheduled if s.num_new_tokens > 1)
            decode = sum(1 for s in out.scheduled if s.num_new_tokens == 1)
            context = sum(s.num_computed_tokens + s.num_new_tokens for s in out.scheduled)
            if out.scheduled:
                self.steps.append((time.perf_counter(), prefill, decode, context))
            return out

        scheduler.schedule = schedule
        return self

    def __exit__(self, *exc) -> None:
        del self.engine.scheduler.schedule      # back to the class's method
        self.end = time.perf_counter()

    def summary(self) -> dict:
        """Per group: steps, wall s, mean ms/step, mean batch, KV floor s, weight floor s."""
        engine = self.engine
        kv_bytes_per_token = bytes_per_block(engine.model_config, 1, engine.kv_cache_dtype)
        weight_bytes = sum(p.numel() * p.element_size() for p in engine.runner.model.parameters())
        groups: dict[str, list[float]] = {}
        ends = [s[0] for s in self.steps[1:]] + [self.end]
        for (start, prefill, decode, context), end in zip(self.steps, ends):
            name = "prefill" if prefill else _bucket(decode)
            g = groups.setdefault(name, [0, 0.0, 0, 0.0, 0.0])
            g[0] += 1
            g[1] += end - start
            g[2] += decode
            g[3] += context * kv_bytes_per_token / self.bandwidth
            g[4] += weight_bytes / self.bandwidth
        return {name: {"steps": n, "wall_s": round(wall, 3), "ms_per_step": round(1000 * wall / n, 3),
                       "mean_decode_batch": round(reqs / n, 1), "kv_floor_s": kv,
                       "weight_floor_s": w}
                for name, (n, wall, reqs, kv, w) in groups.items()}


def _bucket(batch: int) -> str:
    for low, high in BUCKETS:
        if low <= batch <= high:
            return f"decode {low}-{high}" if high < 10**9 else f"decode {low}+"
    return "empty"


def format_summary(summary: dict) -> str:
    lines = [f"{'steps':>16} {'n':>5} {'wall s':>7} {'ms/step':>8} {'batch':>6} {'KV floor s':>10} {'W floor s':>9}"]
    for name, g in summary.items():
        lines.append(f"{name:>16} {g['steps']:>5} {g['wall_s']:>7.3f} {g['ms_per_step']:>8.3f} "
                     f"{g['mean_decode_batch']:>6.1f} {g['kv_floor_s']:>10.3f} {g['weight_floor_s']:>9.3f}")
    return "\n".join(lines)
