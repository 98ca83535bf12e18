"""Benchmarks shipped with the engine: `python -m engine.bench {attention,throughput,latency,serve}`."""
