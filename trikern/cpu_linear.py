"""bf16 matmuls on the CPU with the weight laid out once for oneDNN.

PyTorch's CPU `F.linear` on bf16 lays the weight out for oneDNN again on every call; at decoding's
batch sizes that costs more than the product (2-3x at the embedded model's sizes, measured here).
Laying it out once, as torch.compile's CPU freezing does, gives the same bits faster. The packed
copy is made on first use and made again whenever the weight changes (its version counter or
storage), so a trained or edited weight is never read stale; it costs one more copy of the bf16
weights in memory. Anything else -- other dtypes or devices, autograd, a torch build without the
oneDNN ops -- takes `F.linear`.
"""
from __future__ import annotations

import warnings

import torch
import torch.nn.functional as F

_mkldnn = getattr(torch.ops, "mkldnn", None)
enabled = bool(torch.backends.mkldnn.is_available() and _mkldnn is not None
               and hasattr(_mkldnn, "_reorder_linear_weight") and hasattr(_mkldnn, "_linear_pointwise"))


def linear(x: torch.Tensor, weight: torch.Tensor, holder) -> torch.Tensor:
    """x @ weight.T; `holder` (the module that owns the weight) keeps the packed copy."""
    global enabled
    if not (enabled and weight.is_cpu and weight.dtype == torch.bfloat16 and x.dtype == torch.bfloat16
            and x.dim() == 2 and x.is_cpu and not torch.is_grad_enabled()):
        return F.linear(x, weight)
    try:
        stamp = (weight._version, weight.data_ptr())
    except RuntimeError:  # an inference-mode tensor has no version counter: it cannot change in place either
        stamp = (-1, weight.data_ptr())
    packed = holder.__dict__.get("_cpu_packed")
    if packed is None or packed[0] != stamp:
        try:
            packed = (stamp, _mkldnn._reorder_linear_weight(weight, 1))
        except RuntimeError as e:  # a build whose oneDNN lacks the op: the plain path from now on
            warnings.warn(f"oneDNN weight packing unavailable ({e}); using F.linear", RuntimeWarning, stacklevel=2)
            enabled = False
            return F.linear(x, weight)
        holder.__dict__["_cpu_packed"] = packed
    return _mkldnn._linear_pointwise(x.contiguous(), packed[1], None, "none", [], "")
