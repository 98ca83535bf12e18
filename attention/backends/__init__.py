"""Attention backends; `attention/selector.py` holds the registry."""
