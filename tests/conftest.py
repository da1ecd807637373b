"""Test session set-up: Triton kernels run under the CPU interpreter (set before triton imports)."""
import os
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
# Tuning results (kernel configs, auto's step-cost profile) of test runs never land in the checkout.
os.environ.setdefault("TRIKERN_AUTOTUNE_DIR", tempfile.mkdtemp(prefix="trikern-autotune-"))

import torch  # noqa: E402

# Tiny shapes: one thread per pytest-xdist worker is faster than two fighting over 2 cores.
torch.set_num_threads(1)
