"""TritonJitWatch: how many Triton kernel variants a stretch of code builds, and the wall time spent.

Triton specializes a kernel per signature (dtypes, constexprs, integer arguments divisible by 16 or
equal to 1); each new variant is compiled, or loaded from the on-disk cache, on its first launch,
on the host, before the launch. The throughput benchmark watches each timed run with it, so a slow
first run can be told apart from one that builds kernels. Uses `triton.knobs.runtime`'s
`jit_cache_hook` (before a build) and `jit_post_compile_hook` (after it); the hooks that were
installed before are still called. Nothing is watched where triton has no such knobs (`available` stays False); interpreted kernels
(TRITON_INTERPRET=1) never reach the hooks.
"""
from __future__ import annotations

import collections
import time


class TritonJitWatch:
    """Context manager: `num_kernels`, `seconds`, `names` (kernel name -> variants built) and `variants`
    (kernel name -> each build's signature) while active."""

    def __init__(self) -> None:
        self.num_kernels = 0
        self.seconds = 0.0
        self.names: collections.Counter[str] = collections.Counter()
        self.variants: dict[str, list[str]] = collections.defaultdict(list)   # name -> Triton's repr of each
        self._started: dict[object, float] = {}
        self._knobs = None
        self._previous = (None, None)
        self.available = False        # True once the hooks are installed

    def __enter__(self) -> "TritonJitWatch":
        try:
            from triton import knobs
        except ImportError:
            return self
        runtime = knobs.runtime
        if not hasattr(runtime, "jit_cache_hook") or not hasattr(runtime, "jit_post_compile_hook"):
            return self
        self._knobs, self.available = runtime, True
        self._previous = (runtime.jit_cache_hook, runtime.jit_post_compile_hook)
        runtime.jit_cache_hook, runtime.jit_post_compile_hook = self._before, self._after
        return self

    def __exit__(self, *exc) -> None:
        if self._knobs is not None:
            self._knobs.jit_cache_hook, self._knobs.jit_post_compile_hook = self._previous
            self._knobs = None

    def _before(self, **kwargs):
        self._started[_key(kwargs)] = time.perf_counter()
        previous = self._previous[0]
        return previous(**kwargs) if previous is not None else None   # truthy: skip the build

    def _after(self, **kwargs):
        start = self._started.pop(_key(kwargs), None)
        if start is not None:
            self.seconds += time.perf_counter() - start
        self.num_kernels += 1
        fn = kwargs.get("fn")
        name = getattr(fn, "name", None) or str(fn)
        self.names[name] += 1
        # Triton's repr (options, argument types) and its cache key (the arguments' specializations)
        self.variants[name].append(" ".join(str(kwargs[k]) for k in ("repr", "key") if k in kwargs))
        previous = self._previous[1]
        return previous(**kwargs) if previous is not None else None

    def summary(self, variants: bool = False) -> dict:
        """num_kernels is None when the hooks could not be installed (nothing was watched); with
        `variants`, also each build's signature as Triton prints it (to tell two variants apart)."""
        out = {"num_kernels": self.num_kernels if self.available else None, "seconds": round(self.seconds, 3),
               "kernels": dict(self.names.most_common())}
        if variants:
            out["variants"] = dict(self.variants)
        return out


def _key(kwargs: dict) -> object:
    key = kwargs.get("key")
    try:
        hash(key)
        return key
    except TypeError:
        return repr(key)
