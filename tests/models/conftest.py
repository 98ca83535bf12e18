"""Model tests run the Triton kernels (models/layers/ops) through Triton's interpreter when there is no GPU.

TRITON_INTERPRET must be set before triton is first imported (transformers, which the model tests
import, can import it), so it is set here, before any test module of this folder is collected; the
kernel test modules also set it themselves.
"""
import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
