"""RMSNorm on the CPU: the layer norm of [x, -x], one fused kernel instead of ~7 dispatched ops.

The same op as `kernels.rmsnorm.rmsnorm_ref` (x * rsqrt(mean(x^2) + eps) in fp32, rounded to x's
dtype, then times the weight). [x, -x] has mean 0 and variance mean(x^2), so its layer norm is x's
RMS norm. torch's CPU rms_norm runs as ~7 dispatched ops (~15 us for one 256-wide row here), the
mirror and layer_norm as two (~6 us: cat 2.5 + layer_norm 3.5), and a decode step has two norms per
layer. Both widen a bf16 / fp16 input to fp32 and round once; the mirrored mean is 0 only up to
fp32 summation order, which moves ~1e-5 of bf16 outputs by an ulp (tests/test_cpu_backend.py bounds
it against the reference).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def rmsnorm(x, weight, eps):
    H = x.shape[-1]
    return F.layer_norm(torch.cat([x, -x], -1), (2 * H,), eps=eps)[..., :H] * weight


def add_rmsnorm(x, residual, weight, eps):
    h = x + residual
    return rmsnorm(h, weight, eps), h
