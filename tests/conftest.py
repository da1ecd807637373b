"""Test session set-up: Triton kernels run under the CPU interpreter (set before triton imports)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")

import torch  # noqa: E402

# Tiny shapes: one thread per pytest-xdist worker is faster than two fighting over 2 cores.
torch.set_num_threads(1)
