"""Paged attention: the `Attention` layer models use, and the pluggable backends behind it."""
from attention.layer import Attention
from attention.qk_rope import QKRope

__all__ = ["Attention", "QKRope"]
