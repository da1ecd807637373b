"""GPTQ: int4 quantization that corrects each column's rounding error on the columns not yet
quantized, weighted by the inputs a calibration set feeds the linear (Frantar et al. 2022), for
models that round-to-nearest int4 hurts too much (small models: see README, Quantized weights).

    gptq_quantize_model(model, spec, windows)   # in place: the layer linears become QuantLinears

`windows` [n, T] are calibration token ids; one causal pass over them (trikern/train/distill.py's
BatchedCausal, batch `batch`) records H = sum x^T x of every layer linear's input (q/k/v share one as
the fused qkv_proj, gate/up as gate_up_proj). Each weight is then quantized column by column in the
same layouts as `quantize_weight` (symmetric: zero point 8; asymmetric: min / max of the group; the
group size `group_for` picks), so the result loads, runs and exports as any int4 weight. By
default the Hessians all come from the 16-bit model in one pass; `sequential=True` re-measures them
layer by layer on the quantized layers' outputs (one pass per layer), and `act_order=True` takes the
columns in order of decreasing input energy (the QuantLinear then gathers its input, as for an
act-order GPTQ checkpoint). `trikern quantize --calibration` runs the default, or either variant with
`--sequential` / `--act-order` (act-order: GPTQ format only, whose g_idx holds it).
"""
from __future__ import annotations

import torch

from ..kernels.qweight import Int4Weight, pack_int4, unpack_int4
from .checkpoint import MODEL_LINEARS
from .common import FormatError, Spec, group_for


class _Recorder(torch.nn.Module):
    """Stands in for a linear during the calibration pass: adds its input's x^T x to H."""

    def __init__(self, inner):
        super().__init__()
        self.inner = inner
        K = inner.weight.shape[1]
        self.H = torch.zeros(K, K, dtype=torch.float32, device=inner.weight.device)
        self.rows = 0

    def forward(self, x):
        x2 = x.reshape(-1, x.shape[-1]).float()
        self.H.addmm_(x2.T, x2)
        self.rows += x2.shape[0]
        return self.inner(x)


def gptq_weight(W: torch.Tensor, H: torch.Tensor, spec: Spec, scale_dtype, where: str = "weight",
                damp: float = 0.01, block: int = 128) -> Int4Weight:
    """GPTQ of W [N, K] given H [K, K] (the mean of x^T x): columns in order, groups of
    `group_for(K, spec.group)` columns, scales from the group's weights as they are when it starts
    (already corrected for the columns before it). Returns the Int4Weight."""
    if spec.weights != "int4":
        raise ValueError(f"{where}: GPTQ here is for int4 weights, not {spec.weights}")
    N, K = W.shape
    g = group_for(K, spec.group, where)
    block = max(block // g, 1) * g  # a block holds whole groups: a group's columns are all in W1
    W = W.float().clone()
    H = H.clone()
    dead = torch.diag(H) == 0  # inputs never seen: nothing to fit, quantize as they are
    H[dead, dead] = 1
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    try:
        L = torch.linalg.cholesky(H)
        Hinv = torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError as e:  # not positive definite even damped: a calibration set too small
        raise FormatError(f"{where}: GPTQ needs a positive-definite input Hessian ({e}); use more calibration "
                          f"tokens") from None
    q = torch.zeros(N, K, dtype=torch.uint8, device=W.device)
    G = K // g
    scales = torch.zeros(N, G, dtype=torch.float32, device=W.device)
    zeros = None if spec.symmetric else torch.zeros(N, G, dtype=torch.float32, device=W.device)
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            col = i1 + i
            if col % g == 0:  # the group's scale (and zero point), as quantize_int4 computes them
                Wg = W1[:, i:i + g]
                if spec.symmetric:
                    s = Wg.abs().amax(-1).clamp_min(1e-10) / 7.0
                    z = torch.full_like(s, 8.0)
                else:
                    lo, hi = Wg.amin(-1).clamp(max=0.0), Wg.amax(-1).clamp(min=0.0)
                    s = ((hi - lo) / 15.0).clamp_min(1e-10)
                    z = torch.round(-lo / s).clamp_(0, 15)
                s = s.to(scale_dtype).float()  # the scale the kernels will read
                scales[:, col // g] = s
                if zeros is not None:
                    zeros[:, col // g] = z
            w = W1[:, i]
            qi = (torch.round(w / s) + z).clamp_(0, 15)
            q[:, col] = qi.to(torch.uint8)
            err = (w - (qi - z) * s) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return Int4Weight(pack_int4(q), scales.to(scale_dtype), None if zeros is None else zeros.to(torch.uint8), g)


def gptq_quantize_model(model, spec: Spec, windows: torch.Tensor, batch: int = 4, damp: float = 0.01,
                        scale_dtype=None, sequential: bool = False, act_order: bool = False):
    """Quantize `model`'s layer linears in place with GPTQ over calibration windows [n, T]; scales in
    `scale_dtype` (default: the model dtype). `sequential`: one calibration pass per layer, so each
    layer's Hessians see the inputs the layers before it give once quantized (L passes, not one).
    `act_order`: quantize the columns in order of decreasing input energy (diag H), as GPTQ's
    desc_act does; groups are then runs of that order, and the QuantLinear gathers its input to
    match (its `perm`, as for an act-order GPTQ checkpoint)."""
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows: expected token ids [n, T] with n >= 1, got shape {list(windows.shape)}")
    layers = list(range(len(model.layers)))
    for group in ([[i] for i in layers] if sequential else [layers]):
        _calibrate_and_quantize(model, spec, windows, batch, damp, scale_dtype, group, act_order)
    return model


def _calibrate_and_quantize(model, spec, windows, batch, damp, scale_dtype, layer_ids, act_order=False):
    """One pass over `windows` recording the inputs of the linears of `layer_ids`, then GPTQ on each."""
    from ..model import QuantLinear  # noqa: PLC0415
    from ..train.distill import BatchedCausal  # noqa: PLC0415

    recorders = {}
    for i in layer_ids:
        layer = model.layers[i]
        for name in MODEL_LINEARS:
            r = recorders[(i, name)] = _Recorder(layer.get_submodule(name))
            layer.set_submodule(name, r)
    try:
        with torch.inference_mode():
            for b in range(0, windows.shape[0], batch):
                BatchedCausal(model, windows[b:b + batch].shape[0]).hidden(windows[b:b + batch])
    finally:
        for (i, name), r in recorders.items():
            model.layers[i].set_submodule(name, r.inner)
    dtype = scale_dtype or model.embed_tokens.weight.dtype
    for (i, name), r in recorders.items():
        with torch.inference_mode(False), torch.no_grad():
            W, H, perm = r.inner.weight.detach(), r.H / max(r.rows, 1), None
            if act_order:
                perm = torch.argsort(torch.diag(H), descending=True)
                W, H = W[:, perm], H[perm][:, perm]
            w = gptq_weight(W, H, spec, dtype, f"layers.{i}.{name}.weight", damp)
            if act_order:
                w, perm = _canonical_order(w, perm)
        model.layers[i].set_submodule(name, QuantLinear(w, perm, backend=model.backend))
        r.H = None


def _canonical_order(w: Int4Weight, perm: torch.Tensor) -> tuple[Int4Weight, torch.Tensor]:
    """The same act-order weight with each group's columns in original column order: the order a
    checkpoint's g_idx gives at load (it records each column's group, not the order within one), so
    the model computes exactly as the act-order checkpoint it exports (sums in the same order)."""
    K = perm.numel()
    group = torch.arange(K, device=perm.device) // w.group
    order = torch.argsort(group * K + perm)  # by group, then by original column
    packed = pack_int4(unpack_int4(w.packed)[:, order])
    return Int4Weight(packed, w.scales, w.zeros, w.group), perm[order]
