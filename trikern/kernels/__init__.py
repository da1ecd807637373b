"""trikern's kernels: each op is a Triton kernel plus the PyTorch reference that specifies it; the
CPU backend (kernels/cpu/) has faster versions of the model's ops for CPU tensors.

Call the ops through this package with a `backend` ("auto" | "cpu" | "triton" | "torch"; see
dispatch.py); ops.py routes each. CAUSAL / BIDIRECTIONAL / QUADRATIC are the attention patterns
(`attention(..., pattern)`).
"""
from .attention import BIDIRECTIONAL, CAUSAL, QUADRATIC
from .dispatch import BACKENDS, check_backend, resolve, use_triton
from .rope import rope_table
from .ops import add_rmsnorm, attention, draft_tree, linear_for, reveal, rmsnorm, rope, swiglu, verify

__all__ = [
    "BACKENDS", "BIDIRECTIONAL", "CAUSAL", "QUADRATIC",
    "add_rmsnorm", "attention", "check_backend", "draft_tree", "linear_for", "resolve", "reveal", "rmsnorm", "rope",
    "rope_table", "swiglu", "use_triton", "verify",
]
