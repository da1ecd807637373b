"""trikern's kernels: each op is a Triton kernel plus the PyTorch reference that specifies it.

Call the ops through this package with a `backend` ("auto" | "triton" | "torch"); see dispatch.py.
CAUSAL / BIDIRECTIONAL / QUADRATIC are the attention patterns (`attention(..., pattern)`).
"""
import os

# Triton 3.9 warns on every compile unless the FP-fusion default is explicit; keep today's default (on).
os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")

from .attention import BIDIRECTIONAL, CAUSAL, QUADRATIC, attention
from .dispatch import BACKENDS, check_backend, use_triton
from .draft_tree import draft_tree
from .rmsnorm import add_rmsnorm, rmsnorm
from .reveal import reveal
from .rope import rope, rope_table
from .swiglu import swiglu
from .verify import verify

__all__ = [
    "BACKENDS", "BIDIRECTIONAL", "CAUSAL", "QUADRATIC",
    "add_rmsnorm", "attention", "check_backend", "draft_tree", "reveal", "rmsnorm", "rope", "rope_table", "swiglu", "use_triton",
    "verify",
]
