"""TritonJitWatch counts kernel variants built while it is active, times them, and restores the hooks."""
import pytest

from engine.bench.jit_watch import TritonJitWatch

knobs = pytest.importorskip("triton.knobs")


class _Fn:
    name = "_decode_kernel"


def test_counts_and_times_builds_and_chains_earlier_hooks(monkeypatch):
    seen = []
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", lambda **kw: seen.append(("before", kw["key"])))
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", lambda **kw: seen.append(("after", kw["key"])))
    earlier = (knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook)
    with TritonJitWatch() as watch:
        for key in ("a", ("b", [1])):           # what triton passes: a key per specialization
            assert not knobs.runtime.jit_cache_hook(key=key, fn=_Fn())    # falsy: triton goes on to build
            knobs.runtime.jit_post_compile_hook(key=key, fn=_Fn())
    assert (knobs.runtime.jit_cache_hook, knobs.runtime.jit_post_compile_hook) == earlier
    assert watch.num_kernels == 2 and watch.seconds >= 0
    assert watch.summary()["kernels"] == {"_decode_kernel": 2}
    assert "variants" not in watch.summary()
    assert watch.summary(variants=True)["variants"] == {"_decode_kernel": ["a", "('b', [1])"]}   # the keys
    assert seen == [("before", "a"), ("after", "a"), ("before", ("b", [1])), ("after", ("b", [1]))]


def test_nothing_built_nothing_counted():
    with TritonJitWatch() as watch:
        pass
    assert watch.summary() == {"num_kernels": 0, "seconds": 0.0, "kernels": {}}


def test_without_the_knobs_nothing_is_claimed(monkeypatch):
    monkeypatch.delattr(type(knobs.runtime), "jit_post_compile_hook", raising=False)
    monkeypatch.delattr(knobs.runtime, "jit_post_compile_hook", raising=False)
    with TritonJitWatch() as watch:
        pass
    assert not watch.available and watch.summary()["num_kernels"] is None


def test_variants_record_the_signature_triton_prints(monkeypatch):
    monkeypatch.setattr(knobs.runtime, "jit_cache_hook", None)
    monkeypatch.setattr(knobs.runtime, "jit_post_compile_hook", None)
    with TritonJitWatch() as watch:
        for spec in ("i32D", "i32"):
            knobs.runtime.jit_cache_hook(key=spec, fn=_Fn(), repr=f"_decode_kernel(n: {spec})")
            knobs.runtime.jit_post_compile_hook(key=spec, fn=_Fn(), repr=f"_decode_kernel(n: {spec})")
    assert watch.summary(variants=True)["variants"] == {
        "_decode_kernel": ["_decode_kernel(n: i32D) i32D", "_decode_kernel(n: i32) i32"]}
