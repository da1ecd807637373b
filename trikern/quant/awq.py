"""Activation-aware scales before int4 (AWQ, Lin et al. 2023): a layer linear's input channels that
carry large activations matter most to its output, so they are scaled up before rounding (a finer
grid for them) and the scale is divided out of the op that produces that input, which costs nothing
at run time and keeps the checkpoint in the standard int4 layout.

    awq_scale_model(model, spec, windows)   # in place, on the 16-bit model; then RTN or GPTQ

One causal pass over the calibration windows records, per layer, the inputs of qkv_proj (the input
RMSNorm's output), gate_up_proj (the post-attention RMSNorm's) and down_proj (SwiGLU's). For each,
the channel scales s = mean|x|^a are searched over a in [0, 1) for the least output error of the
int4-rounded weight on recorded inputs, ||x W^T - (x / s) Q(W s)^T||^2, and folded in: W's columns
times s, the norm weight (or, for down_proj, the up rows of gate_up_proj) divided by s. The 16-bit
model computes the same function, up to the rounding of the scaled norm weights to the model dtype.
o_proj is left alone: its input is attention's output, whose channels come from v_proj rows that
several query heads share under GQA, so one scale per channel cannot be folded there in general.
"""
from __future__ import annotations

import math

import torch

from ..kernels.qweight import dequantize
from .calibrate import record_inputs
from .common import Spec, quantize_weight

GRID = 20  # exponents a = 0, 1/20, ..., 19/20, as the AWQ paper's search
ROWS = 2048  # recorded input rows per linear for the error (mean |x| uses every row)


class _Inputs(torch.nn.Module):
    """Stands in for a linear during the calibration pass: keeps mean |x| per input channel and a
    strided sample of its input rows."""

    def __init__(self, inner, stride: int):
        super().__init__()
        self.inner, self.stride = inner, stride
        self.abs_sum = torch.zeros(inner.weight.shape[1], dtype=torch.float32, device=inner.weight.device)
        self.count = 0
        self.rows: list[torch.Tensor] = []

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1]).float()
        self.abs_sum += x2.abs().sum(0)
        self.count += x2.shape[0]
        self.rows.append(x2[:: self.stride].clone())
        return self.inner(x)


def search_scale(W: torch.Tensor, x: torch.Tensor, mean_abs: torch.Tensor, spec: Spec, where: str = "weight"):
    """(s [K], error ratio) for W [N, K] (fp32) given input rows x [R, K]: the scales s = mean_abs^a
    (normalised to a geometric mean of 1) of least output error of the rounded, scaled weight; the
    ratio is that error over a = 0's (plain RTN)."""
    ref = x @ W.T
    base = mean_abs.clamp_min(1e-8)
    best, best_err, err0 = torch.ones_like(base), math.inf, None
    for i in range(GRID):
        s = base.pow(i / GRID)
        s = s / (s.log().mean().exp())
        err = float((ref - (x / s) @ dequantize(quantize_weight(W * s, spec, where)).T).square().sum())
        err0 = err if i == 0 else err0
        if err < best_err:
            best, best_err = s, err
    return best, best_err / max(err0, 1e-30)


def awq_scale_model(model, spec: Spec, windows: torch.Tensor, batch: int = 4) -> dict:
    """Search and fold AWQ scales into `model`'s layers in place (int4 `spec`: the group size and
    symmetry the weights will be rounded with). Returns {"layers.i.name": output error with the
    scales / without} (below 1: the scales helped)."""
    if spec.weights != "int4":
        raise ValueError(f"AWQ scales are for int4 weights, not {spec.weights}")
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows: expected token ids [n, T] with n >= 1, got shape {list(windows.shape)}")
    names = ("self_attn.qkv_proj", "mlp.gate_up_proj", "mlp.down_proj")
    stride = max(1, math.ceil(windows.numel() / ROWS))
    rec = record_inputs(model, windows, batch, lambda lin: _Inputs(lin, stride), range(len(model.layers)), names)
    out = {}
    with torch.no_grad():
        for (i, name), r in rec.items():
            layer, where = model.layers[i], f"layers.{i}.{name}.weight"
            lin = r.inner
            W = lin.weight.detach().float()
            s, ratio = search_scale(W, torch.cat(r.rows), r.abs_sum / max(r.count, 1), spec, where)
            out[f"layers.{i}.{name}"] = ratio
            r.rows = []
            lin.weight.copy_((W * s).to(lin.weight.dtype))
            if name == "mlp.down_proj":  # its input is silu(gate) * up: the up rows carry 1 / s
                up = layer.mlp.gate_up_proj.weight
                inter = layer.mlp.sizes[0]
                up[inter:].copy_((up[inter:].float() / s[:, None]).to(up.dtype))
            else:
                norm = layer.input_layernorm if name == "self_attn.qkv_proj" else layer.post_attention_layernorm
                norm.weight.copy_((norm.weight.float() / s).to(norm.weight.dtype))
    return out
