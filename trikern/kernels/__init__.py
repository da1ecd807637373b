"""trikern's kernels: each op is a Triton kernel plus the PyTorch reference that specifies it; the
CPU backend (kernels/cpu/) has faster versions of the model's ops for CPU tensors.

Call the ops through this package with a `backend` ("auto" | "cpu" | "triton" | "torch"; see
dispatch.py); ops.py routes each. CAUSAL / BIDIRECTIONAL / QUADRATIC / TREE are the attention patterns
(`attention(..., pattern)`; TREE takes a `TreeMask`); `attention_varlen` takes several sequences'
chunks at once (a `Varlen` layout, or a `VarlenDevice` for CUDA graphs).
"""
from .attention import BIDIRECTIONAL, CAUSAL, QUADRATIC, TREE, TreeMask, Varlen, VarlenDevice
from .dispatch import BACKENDS, check_backend, resolve, use_triton
from .rope import rope_table
from .fused_linear import interleave_gate_up, interleave_qkv
from .ops import (add_rmsnorm, attention, attention_varlen, build_tree, draft_tree, linear_for, linear_residual,
                  norm_gate_up_swiglu, norm_qkv_rope_cache, quant_linear, reveal, rmsnorm, rope, swiglu, tree_verify,
                  verify)

__all__ = [
    "BACKENDS", "BIDIRECTIONAL", "CAUSAL", "QUADRATIC", "TREE", "TreeMask", "Varlen", "VarlenDevice",
    "add_rmsnorm", "attention", "attention_varlen", "build_tree", "check_backend", "draft_tree", "interleave_gate_up",
    "interleave_qkv", "linear_for", "linear_residual", "norm_gate_up_swiglu", "norm_qkv_rope_cache", "quant_linear",
    "resolve", "reveal", "rmsnorm", "rope", "rope_table", "swiglu", "tree_verify", "use_triton", "verify",
]
