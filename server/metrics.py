"""Prometheus metrics of one app, in its own CollectorRegistry.

Engine-wide gauges and counters are read from the AsyncEngine's stats snapshot at scrape time;
latency histograms are observed per request by RequestTimer (a non-streamed request's one output brings the
engine's times of its steps). The names are vLLM's (`vllm:` prefix, same
suffixes, `model_name` label), so dashboards and autoscalers written for vLLM read them unchanged;
`vllm:healthy` is this engine's own.
"""
from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

from engine.outputs import TOKEN_TIMES, RequestOutput

_PREFIX = "vllm"
_LATENCY_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0)

# (metric suffix, EngineStats field, help)
_GAUGES = (("num_requests_running", "num_running", "Requests in the running batch."),
           ("num_requests_waiting", "num_waiting", "Requests waiting to be scheduled."),
           ("kv_cache_usage_perc", "kv_cache_usage", "Fraction of KV-cache blocks in use (0..1)."))
_COUNTERS = (("prefix_cache_queries", "prefix_cache_queries", "Prompt tokens looked up in the prefix cache."),
             ("prefix_cache_hits", "prefix_cache_hits", "Prompt tokens found in the prefix cache."),
             ("prompt_tokens", "num_prompt_tokens", "Prompt tokens processed."),
             ("generation_tokens", "num_generation_tokens", "Tokens generated."),
             ("num_preemptions", "num_preemptions", "Requests preempted (recomputed later)."))


class _EngineStatsCollector:
    """Turns the engine's stats snapshot into Prometheus gauges and counters at scrape time."""

    def __init__(self, async_engine, model_name: str) -> None:
        self.async_engine = async_engine
        self.model_name = model_name

    def collect(self):
        stats = self.async_engine.stats
        for suffix, field, help_text in _GAUGES:
            family = GaugeMetricFamily(f"{_PREFIX}:{suffix}", help_text, labels=["model_name"])
            family.add_metric([self.model_name], float(getattr(stats, field, 0)))
            yield family
        for suffix, field, help_text in _COUNTERS:
            family = CounterMetricFamily(f"{_PREFIX}:{suffix}", help_text, labels=["model_name"])
            family.add_metric([self.model_name], float(getattr(stats, field, 0)))
            yield family
        healthy = GaugeMetricFamily(f"{_PREFIX}:healthy", "1 while the engine loop is alive and progressing.")
        healthy.add_metric([], 1.0 if self.async_engine.is_healthy() else 0.0)
        yield healthy


class ServerMetrics:
    """The registry of one app: engine stats plus TTFT / inter-token / end-to-end latency histograms."""

    def __init__(self, async_engine, model_name: str) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_EngineStatsCollector(async_engine, model_name))
        labels = ["model_name"]
        self.ttft = Histogram(f"{_PREFIX}:time_to_first_token_seconds", "Time to first token.", labels,
                              registry=self.registry, buckets=_LATENCY_BUCKETS).labels(model_name)
        self.itl = Histogram(f"{_PREFIX}:inter_token_latency_seconds", "Time between output steps of a request.",
                             labels, registry=self.registry, buckets=_LATENCY_BUCKETS).labels(model_name)
        self.e2e = Histogram(f"{_PREFIX}:e2e_request_latency_seconds", "Request arrival to finish.", labels,
                             registry=self.registry, buckets=_LATENCY_BUCKETS).labels(model_name)

    def render(self) -> bytes:
        return generate_latest(self.registry)

    def timer(self) -> "RequestTimer":
        return RequestTimer(self)


class RequestTimer:
    """Observes the latencies of one HTTP request's engine requests (a completions request's prompts; one
    for chat), each as vLLM times a request: call on_output(out, stream) with each output of that engine
    request (or on_tokens(stream) whenever new tokens of it arrive), finish() once at the end (one
    end-to-end latency per engine request that produced tokens, at least one, to its last tokens)."""

    def __init__(self, metrics: ServerMetrics) -> None:
        self.metrics = metrics
        self.arrival = time.monotonic()
        self.last_token: dict[int, float] = {}      # engine request (stream index) -> its last tokens' time

    def on_output(self, out: RequestOutput, stream: int = 0) -> None:
        """An output of engine request `stream`: a FINAL_ONLY one carries the engine's times of the steps that
        brought it tokens (metrics TOKEN_TIMES, time.monotonic(): one clock for every process of the
        machine), each observed as on_tokens at that time; another counts now where it brought tokens."""
        times = out.metrics.get(TOKEN_TIMES)
        if times is not None:
            for when in times:
                self.on_tokens(stream, when)
        elif any(c.token_ids_delta for c in out.outputs):
            self.on_tokens(stream)

    def on_tokens(self, stream: int = 0, now: float | None = None) -> None:
        """New tokens of engine request `stream` at `now` (time.monotonic(); None: now)."""
        now = time.monotonic() if now is None else now
        last = self.last_token.get(stream)
        if last is None:
            self.metrics.ttft.observe(now - self.arrival)
        else:
            self.metrics.itl.observe(now - last)
        self.last_token[stream] = now

    def finish(self) -> None:
        """Each engine request's end-to-end latency: arrival to its last tokens (now where none came)."""
        for end in self.last_token.values() or [time.monotonic()]:
            self.metrics.e2e.observe(end - self.arrival)
