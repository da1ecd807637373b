"""GPTQ: int4 or fp8 quantization that corrects each column's rounding error on the columns not yet
quantized, weighted by the inputs a calibration set feeds the linear (Frantar et al. 2022), for
models that round to nearest hurts too much (small models: see README, Quantized weights).

    gptq_quantize_model(model, spec, windows)   # in place: the layer linears become QuantLinears

`windows` [n, T] are calibration token ids; one causal pass over them (trikern/train/distill.py's
BatchedCausal, batch `batch`) records H = sum x^T x of every layer linear's input (q/k/v share one as
the fused qkv_proj, gate/up as gate_up_proj). Each weight is then quantized column by column in the
same layouts as `quantize_weight` (int4 symmetric: zero point 8; asymmetric: min / max of the group;
the group size `group_for` picks; fp8: e4m3 with RTN's per-row scale, fixed before the sweep), so
the result loads, runs and exports as any int4 / fp8 weight. By default the Hessians all come from
the 16-bit model in one pass; `sequential=True` re-measures them layer by layer on the quantized
layers' outputs (one pass per layer), and `act_order=True` takes the columns in order of decreasing
input energy (int4: the QuantLinear then gathers its input, as for an act-order GPTQ checkpoint;
fp8 has no groups, so its columns go straight back in place). `trikern quantize --calibration` runs
the default, or either variant with `--sequential` / `--act-order` (int4 act-order: GPTQ format
only, whose g_idx holds it). `clip_search=True` (and `rtn_int4`, the same without GPTQ) searches
each int4 group's range for the least squared weight error (`group_params`); a library option.
"""
from __future__ import annotations

import torch

from ..kernels.qweight import FP8_MAX, Fp8Weight, Int4Weight, QuantWeight, pack_int4, quantize_int4, unpack_int4
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
                damp: float = 0.01, block: int = 128, clip_search: bool = False) -> QuantWeight:
    """GPTQ of W [N, K] given H [K, K] (the mean of x^T x): columns in order, each one's rounding
    error pushed onto the columns after it. int4: groups of `group_for(K, spec.group)` columns,
    scales from the group's weights as they are when it starts (already corrected for the columns
    before it), in `scale_dtype`; `clip_search`: each group's range searched (`group_params`).
    fp8: e4m3 with the per-row scale fixed up front from the original row (max |W| / 448, fp32, as
    `quantize_fp8`), so a corrected value past 448 saturates. Returns the Int4Weight / Fp8Weight."""
    N, K = W.shape
    W = W.float().clone()
    Hinv = _inverse_factor(H, damp, where)
    if spec.weights == "fp8":
        scale = W.abs().amax(-1).clamp_min(1e-12) / FP8_MAX
        q8 = torch.empty(N, K, dtype=torch.float8_e4m3fn, device=W.device)

        def fp8_column(W1, i, col):
            qi = q8[:, col] = (W1[:, i] / scale).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
            return qi.float() * scale

        _gptq_columns(W, Hinv, block, fp8_column)
        return Fp8Weight(q8, scale)
    if spec.weights != "int4":
        raise ValueError(f"{where}: GPTQ here is for int4 or fp8 weights, not {spec.weights}")
    g = group_for(K, spec.group, where)
    block = max(block // g, 1) * g  # a block holds whole groups: a group's columns are all in W1
    q = torch.zeros(N, K, dtype=torch.uint8, device=W.device)
    G = K // g
    scales = torch.zeros(N, G, dtype=torch.float32, device=W.device)
    zeros = None if spec.symmetric else torch.zeros(N, G, dtype=torch.float32, device=W.device)
    sz = [None, None]  # the current group's scale and zero point

    def int4_column(W1, i, col):
        if col % g == 0:  # the group's scale (and zero point), as quantize_int4 computes them
            s, z = group_params(W1[:, None, i:i + g], spec.symmetric, scale_dtype, clip_search)
            s, z = s[:, 0], z[:, 0]
            scales[:, col // g] = s
            if zeros is not None:
                zeros[:, col // g] = z
            sz[:] = s, z
        s, z = sz
        qi = (torch.round(W1[:, i] / s) + z).clamp_(0, 15)
        q[:, col] = qi.to(torch.uint8)
        return (qi - z) * s

    _gptq_columns(W, Hinv, block, int4_column)
    return Int4Weight(pack_int4(q), scales.to(scale_dtype), None if zeros is None else zeros.to(torch.uint8), g)


# Ranges tried by the clip search: the group's min / max scaled by 1, 0.99, ..., 0.70.
CLIP_FRACTIONS = tuple(1.0 - 0.01 * i for i in range(31))


def group_params(Wg: torch.Tensor, symmetric: bool, scale_dtype, clip_search: bool = False):
    """Scale and zero point (fp32, the scale rounded to `scale_dtype`) of int4 groups Wg [N, G, g],
    as `quantize_int4` computes them (symmetric: max |W| / 7, zero 8; asymmetric: (max - min) / 15,
    zero round(-min / s)). `clip_search`: the range shrunk by each of CLIP_FRACTIONS in turn (and, with
    zero points, each zero point also moved by one step either way) and, per group, the one whose
    rounded group is closest to Wg (squared error) kept: clipping a few outliers buys a finer grid for
    the rest, and an integer zero point one step off can sit the grid nearer the weights than the
    rounded minimum does. The result is still the standard layout (integer zero points)."""
    Wg = Wg.float()
    amax = Wg.abs().amax(-1)
    lo, hi = Wg.amin(-1).clamp(max=0.0), Wg.amax(-1).clamp(min=0.0)

    def params(f):
        if symmetric:
            s = (f * amax).clamp_min(1e-10) / 7.0
            z = torch.full_like(s, 8.0)
        else:
            s = (f * (hi - lo) / 15.0).clamp_min(1e-10)
            z = torch.round(-f * lo / s).clamp_(0, 15)
        return s.to(scale_dtype).float(), z  # the scale the kernels will read

    def error(s, z):
        q = (torch.round(Wg / s[..., None]) + z[..., None]).clamp_(0, 15)
        return ((q - z[..., None]) * s[..., None] - Wg).square_().sum(-1)

    s, z = params(1.0)
    if not clip_search:
        return s, z
    best = error(s, z)
    for f in CLIP_FRACTIONS:
        sf, zf = params(f)
        for dz in ((0,) if symmetric else (0, -1, 1)):
            zt = (zf + dz).clamp_(0, 15)
            err = error(sf, zt)
            better = err < best
            best = torch.where(better, err, best)
            s, z = torch.where(better, sf, s), torch.where(better, zt, z)
    return s, z


def rtn_int4(W: torch.Tensor, spec: Spec, scale_dtype=None, where: str = "weight",
             clip_search: bool = True) -> Int4Weight:
    """Round-to-nearest int4 of W [N, K] with `group_params`' scales (the group size `group_for`
    picks); with `clip_search` off, `quantize_int4` itself."""
    N, K = W.shape
    g = group_for(K, spec.group, where)
    sd = scale_dtype or W.dtype
    if not clip_search:
        return quantize_int4(W, g, spec.symmetric, sd)
    Wg = W.float().reshape(N, K // g, g)
    s, z = group_params(Wg, spec.symmetric, sd, clip_search)
    q = (torch.round(Wg / s[..., None]) + z[..., None]).clamp_(0, 15).reshape(N, K).to(torch.uint8)
    return Int4Weight(pack_int4(q), s.to(sd), None if spec.symmetric else z.to(torch.uint8), g)


def _inverse_factor(H: torch.Tensor, damp: float, where: str) -> torch.Tensor:
    """The upper Cholesky factor of the damped H's inverse: row i holds how column i's error is
    spread over the columns after it."""
    H = H.clone()
    dead = torch.diag(H) == 0  # inputs never seen: nothing to fit, quantize as they are
    H[dead, dead] = 1
    H.diagonal().add_(damp * torch.mean(torch.diag(H)))
    try:
        L = torch.linalg.cholesky(H)
        return torch.linalg.cholesky(torch.cholesky_inverse(L), upper=True)
    except RuntimeError as e:  # not positive definite even damped: a calibration set too small
        raise FormatError(f"{where}: GPTQ needs a positive-definite input Hessian ({e}); use more calibration "
                          f"tokens") from None


def _gptq_columns(W: torch.Tensor, Hinv: torch.Tensor, block: int, quantize_column):
    """The GPTQ sweep over W [N, K] (fp32, updated in place): `quantize_column(W1, i, col)` quantizes
    column i of the current block W1 (column `col` of W, already corrected), records it and returns
    its dequantized value; the error goes to the block's later columns at once and to the columns
    after the block in one product per block (lazy batch updates)."""
    K = W.shape[1]
    for i1 in range(0, K, block):
        i2 = min(i1 + block, K)
        W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
        Err1 = torch.zeros_like(W1)
        for i in range(i2 - i1):
            err = (W1[:, i] - quantize_column(W1, i, i1 + i)) / Hinv1[i, i]
            W1[:, i:] -= err[:, None] * Hinv1[i, i:][None, :]
            Err1[:, i] = err
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]


def gptq_quantize_model(model, spec: Spec, windows: torch.Tensor, batch: int = 4, damp: float = 0.01,
                        scale_dtype=None, sequential: bool = False, act_order: bool = False,
                        clip_search: bool = False):
    """Quantize `model`'s layer linears in place with GPTQ over calibration windows [n, T] (int4 or
    fp8, as `spec` says); int4 scales in `scale_dtype` (default: the model dtype), fp8's fp32. `sequential`: one calibration pass per layer, so each
    layer's Hessians see the inputs the layers before it give once quantized (L passes, not one).
    `act_order`: quantize the columns in order of decreasing input energy (diag H), as GPTQ's
    desc_act does; int4 groups are then runs of that order, and the QuantLinear gathers its input
    to match (its `perm`, as for an act-order GPTQ checkpoint); fp8 columns go back in place.
    `clip_search`: int4 group ranges searched (`group_params`)."""
    if windows.dim() != 2 or windows.shape[0] == 0:
        raise ValueError(f"windows: expected token ids [n, T] with n >= 1, got shape {list(windows.shape)}")
    layers = list(range(len(model.layers)))
    for group in ([[i] for i in layers] if sequential else [layers]):
        _calibrate_and_quantize(model, spec, windows, batch, damp, scale_dtype, group, act_order, clip_search)
    return model


def _calibrate_and_quantize(model, spec, windows, batch, damp, scale_dtype, layer_ids, act_order=False,
                            clip_search=False):
    """One pass over `windows` recording the inputs of the linears of `layer_ids`, then GPTQ on each."""
    from ..model import QuantLinear  # noqa: PLC0415

    recorders = record_inputs(model, windows, batch, _Recorder, layer_ids, MODEL_LINEARS)
    dtype = scale_dtype or model.embed_tokens.weight.dtype
    for (i, name), r in recorders.items():
        with torch.inference_mode(False), torch.no_grad():
            W, H, perm = r.inner.weight.detach(), r.H / max(r.rows, 1), None
            if act_order:
                perm = torch.argsort(torch.diag(H), descending=True)
                W, H = W[:, perm], H[perm][:, perm]
            w = gptq_weight(W, H, spec, dtype, f"layers.{i}.{name}.weight", damp, clip_search=clip_search)
            if act_order and isinstance(w, Fp8Weight):  # no groups: the columns simply go back in place
                w, perm = Fp8Weight(w.weight[:, torch.argsort(perm)].contiguous(), w.scale), None
            elif act_order:
                w, perm = _canonical_order(w, perm)
        model.layers[i].set_submodule(name, QuantLinear(w, perm, backend=model.backend))
        r.H = None


def record_inputs(model, windows, batch, recorder, layer_ids, names) -> dict:
    """One causal pass over `windows` [n, T] (`batch` at a time) with `recorder(linear)` standing in
    for the linears `names` of the layers `layer_ids`; the linears are back in place after it.
    Returns {(layer, name): recorder}."""
    from ..train.distill import BatchedCausal  # noqa: PLC0415

    recorders = {}
    for i in layer_ids:
        layer = model.layers[i]
        for name in names:
            r = recorders[(i, name)] = recorder(layer.get_submodule(name))
            layer.set_submodule(name, r)
    try:
        with torch.inference_mode():
            for b in range(0, windows.shape[0], batch):
                BatchedCausal(model, windows[b:b + batch].shape[0]).hidden(windows[b:b + batch])
    finally:
        for (i, name), r in recorders.items():
            model.layers[i].set_submodule(name, r.inner)
    return recorders


def _canonical_order(w: Int4Weight, perm: torch.Tensor) -> tuple[Int4Weight, torch.Tensor]:
    """The same act-order weight with each group's columns in original column order: the order a
    checkpoint's g_idx gives at load (it records each column's group, not the order within one), so
    the model computes exactly as the act-order checkpoint it exports (sums in the same order)."""
    K = perm.numel()
    group = torch.arange(K, device=perm.device) // w.group
    order = torch.argsort(group * K + perm)  # by group, then by original column
    packed = pack_int4(unpack_int4(w.packed)[:, order])
    return Int4Weight(packed, w.scales, w.zeros, w.group), perm[order]
