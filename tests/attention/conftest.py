"""Attention tests run the Triton kernels through Triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before any `@triton.jit` kernel is defined, i.e. before the modules in
attention/ops are imported; conftest.py is loaded before the test modules of this folder.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
