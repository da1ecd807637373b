"""RMSNorm with an optional fused residual add.

Math in fp32, cast back to the input dtype before the weight multiply (the NLD / Llama rule).
With `residual`, computes h = x + residual first and returns (norm(h) * w, h) so the decoder layer
carries the residual stream without a separate add.
"""
from __future__ import annotations

import torch

from .dispatch import use_triton


def rmsnorm_ref(x, weight, eps, residual=None):
    h = x if residual is None else x + residual
    hf = h.float()
    y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    return y if residual is None else (y, h)


def rmsnorm(x, weight, eps, residual=None, backend="auto"):
    if use_triton(backend, x):
        return rmsnorm_triton(x, weight, eps, residual)
    return rmsnorm_ref(x, weight, eps, residual)


def rmsnorm_triton(x, weight, eps, residual):
    raise NotImplementedError("rmsnorm: Triton kernel not written yet")
