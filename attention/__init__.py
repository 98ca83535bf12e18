"""Paged attention: the `Attention` layer models use, and the pluggable backends behind it."""
from attention.layer import Attention

__all__ = ["Attention"]
