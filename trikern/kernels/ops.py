"""Every op, routed to its backend (dispatch.py names them): the Triton launcher, the CPU backend's
version (kernels/cpu/) or the PyTorch reference. The math, arguments and shapes of each op are
described in its kernel file; this module only chooses. An op without a CPU version runs its
reference under "cpu".

`linear_for(backend)` is the matmul of the model's linear layers, chosen once when the model is
built (a one-token CPU step makes ~25 of these calls, so none of them routes again).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .attention import (CAUSAL, VarlenDevice, attention_ref, attention_triton, attention_varlen_ref,
                        attention_varlen_triton)
from .cpu import attention as cpu_attention
from .cpu import linear as cpu_linear
from .cpu import norm as cpu_norm
from .cpu import tree_verify as cpu_tree_verify
from .cpu import quant_linear as cpu_quant_linear
from .dispatch import check_backend, resolve, use_triton
from .draft_tree import draft_tree_ref, draft_tree_triton
from . import fused_linear as FL
from .quant_linear import quant_linear_ref, quant_linear_triton
from .reveal import reveal_ref, reveal_triton
from .rmsnorm import add_rmsnorm_ref, add_rmsnorm_triton, rmsnorm_ref, rmsnorm_triton
from .rope import rope_ref, rope_triton
from .tree import build_tree_ref, build_tree_triton
from .tree_verify import tree_verify as _tree_verify
from .swiglu import swiglu_ref, swiglu_triton
from .verify import verify_ref, verify_triton


def rmsnorm(x, weight, eps, backend="auto"):
    """norm(x) * weight."""
    be = resolve(backend, x)
    if be == "cpu":
        return cpu_norm.rmsnorm(x, weight, eps)
    if be == "triton":
        return rmsnorm_triton(x, weight, eps)
    return rmsnorm_ref(x, weight, eps)


def add_rmsnorm(x, residual, weight, eps, backend="auto"):
    """(norm(x + residual) * weight, x + residual)."""
    be = resolve(backend, x)
    if be == "cpu":
        return cpu_norm.add_rmsnorm(x, residual, weight, eps)
    if be == "triton":
        return add_rmsnorm_triton(x, residual, weight, eps)
    return add_rmsnorm_ref(x, residual, weight, eps)


def attention(q, k, v, k_cache, v_cache, cache_len, pattern=CAUSAL, sub_block=0, scale=None, backend="auto",
              chunk_in_cache=False):
    """`chunk_in_cache`: k / v were also written to slots [n, n + T) before the call (a pass that
    writes the cache); the CPU backend then reads them there. The others ignore it."""
    be = resolve(backend, q)
    if be == "cpu":
        return cpu_attention.attention(q, k, v, k_cache, v_cache, cache_len, pattern, sub_block, scale,
                                       chunk_in_cache)
    if be == "triton":
        return attention_triton(q, k, v, k_cache, v_cache, cache_len, pattern, sub_block, scale)
    return attention_ref(q, k, v, k_cache, v_cache, cache_len, pattern, sub_block, scale)


def attention_varlen(q, k, v, k_cache, v_cache, segs, pattern=CAUSAL, sub_block=0, scale=None, backend="auto",
                     chunk_in_cache=False):
    """Several sequences' chunks in one call, each over its own cache region (an attention.Varlen, or
    a VarlenDevice: the layout as device tensors); `chunk_in_cache` as in `attention`."""
    be = resolve(backend, q)
    if isinstance(segs, VarlenDevice) and be != "triton":
        # Only the Triton kernel reads a device layout as it is (no host sync: CUDA graphs); the others
        # run its host copy over the segments' rows, and rows past them (a bucket's padding) are zeros.
        host = segs.to_host()
        n = host.tokens
        out = attention_varlen(q[:n], k[:n], v[:n], k_cache, v_cache, host, pattern, sub_block, scale, be,
                               chunk_in_cache)
        return torch.cat([out, out.new_zeros(q.shape[0] - n, *out.shape[1:])])
    if be == "cpu":
        return cpu_attention.attention_varlen(q, k, v, k_cache, v_cache, segs, pattern, sub_block, scale,
                                              chunk_in_cache)
    if be == "triton":
        return attention_varlen_triton(q, k, v, k_cache, v_cache, segs, pattern, sub_block, scale)
    return attention_varlen_ref(q, k, v, k_cache, v_cache, segs, pattern, sub_block, scale)


def rope(q, k, positions, inv_freq, attn_factor=1.0, llama4_beta=None, llama4_len=1, backend="auto", table=None):
    """`table` (from `rope_table`) spares the reference recomputing cos / sin; the kernel computes
    its own."""
    if use_triton(backend, q):
        return rope_triton(q, k, positions, inv_freq, attn_factor, llama4_beta, llama4_len)
    return rope_ref(q, k, positions, inv_freq, attn_factor, llama4_beta, llama4_len, table)


def swiglu(gate, up, backend="auto"):
    if use_triton(backend, gate):
        return swiglu_triton(gate, up)
    return swiglu_ref(gate, up)


def draft_tree(anchors, cache_len, sub_block, mask_id, backend="auto"):
    if use_triton(backend, anchors):
        return draft_tree_triton(anchors, cache_len, sub_block, mask_id)
    return draft_tree_ref(anchors, cache_len, sub_block, mask_id)


def reveal(tokens, masked, logits, threshold, mask_id, probs=None, noise=None, backend="auto"):
    if use_triton(backend, logits):
        return reveal_triton(tokens, masked, logits, threshold, mask_id, probs, noise)
    return reveal_ref(tokens, masked, logits, threshold, mask_id, probs, noise)


def verify(draft, target, draft_probs=None, uniforms=None, noise=None,
           k_cache=None, v_cache=None, cache_len=None, stride=1, backend="auto"):
    if use_triton(backend, target):
        return verify_triton(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride)
    return verify_ref(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride)


def build_tree(logp, root, nodes, top_k, backend="auto"):
    if use_triton(backend, logp):
        return build_tree_triton(logp, root, nodes, top_k)
    return build_tree_ref(logp, root, nodes, top_k)


def tree_verify(tokens, parents, depth, ancestors, target, uniforms=None, noise=None, depth_limit=0,
                k_cache=None, v_cache=None, cache_len=None, stride=1, backend="auto"):
    """Torch ops (no host sync; kernels/tree_verify.py), or the CPU backend's host-side walk."""
    if resolve(backend, target) == "cpu":
        return cpu_tree_verify.tree_verify(tokens, parents, depth, ancestors, target, uniforms, noise, depth_limit,
                                           k_cache, v_cache, cache_len, stride)
    return _tree_verify(tokens, parents, depth, ancestors, target, uniforms, noise, depth_limit, k_cache, v_cache,
                        cache_len, stride)


def quant_linear(x, w, backend="auto"):
    """x [..., K] @ dequantize(w).T -> [..., N] in x's dtype; `w` an Int4Weight or Fp8Weight
    (qweight.py), activations stay in their dtype (weight-only quantization)."""
    be = resolve(backend, x)
    if be == "cpu":
        return cpu_quant_linear.quant_linear(x, w)
    if be == "triton":
        return quant_linear_triton(x, w)
    return quant_linear_ref(x, w)


def linear_residual(x, W, residual, backend="auto"):
    """residual + x @ W.T in one launch (kernels/fused_linear.py)."""
    f = FL.linear_residual_triton if use_triton(backend, x) else FL.linear_residual_ref
    return f(x, W, residual)


def norm_gate_up_swiglu(x, norm_w, eps, W_gu, backend="auto"):
    """silu(h @ Wg.T) * (h @ Wu.T), h = rmsnorm(x) * norm_w; W_gu in `interleave_gate_up`'s layout."""
    f = FL.norm_gate_up_swiglu_triton if use_triton(backend, x) else FL.norm_gate_up_swiglu_ref
    return f(x, norm_w, eps, W_gu)


def norm_qkv_rope_cache(x, norm_w, eps, W_qkv, positions, inv_freq, attn_factor=1.0, llama4_beta=None,
                        llama4_len=1, k_cache_layer=None, v_cache_layer=None, slots=None, *, kv_heads, head_dim,
                        backend="auto"):
    """(q, k, v) of rmsnorm(x) * norm_w @ W_qkv.T, q and k rotated; k and v also written to `slots`
    of the cache layer when given. W_qkv in `interleave_qkv`'s layout."""
    f = FL.norm_qkv_rope_cache_triton if use_triton(backend, x) else FL.norm_qkv_rope_cache_ref
    return f(x, norm_w, eps, W_qkv, positions, inv_freq, attn_factor, llama4_beta, llama4_len, k_cache_layer,
             v_cache_layer, slots, kv_heads=kv_heads, head_dim=head_dim)


def plain_linear(x, weight, holder=None):
    """x @ weight.T by `F.linear` (the reference; `holder` is unused)."""
    return F.linear(x, weight)


def linear_for(backend: str):
    """The matmul `(x, weight, holder) -> x @ weight.T` of a model built for `backend`: the CPU
    backend's ("auto" too: it takes `F.linear` itself off the CPU, for other dtypes and under
    autograd; `holder`, the module owning the weight, keeps its laid-out copies), else `F.linear`."""
    return cpu_linear.linear if check_backend(backend) in ("auto", "cpu") else plain_linear
