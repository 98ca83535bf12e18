"""How an `Attention` layer finds the current step's metadata without models passing it around."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Any, Iterator

_current: Any = None


@contextmanager
def set_forward_context(attn_metadata: Any) -> Iterator[None]:
    """Make `attn_metadata` (the builder's output for this step) visible to every layer."""
    global _current
    previous, _current = _current, attn_metadata
    try:
        yield
    finally:
        _current = previous


def get_attn_metadata() -> Any:
    if _current is None:
        raise RuntimeError("Attention was called outside set_forward_context(): "
                           "run the model through the model runner")
    return _current
