"""What the checkpoint formats share: the error type, which linears are quantized, int4 nibble
matrices <-> `Int4Weight` (group layouts, act-order permutations), and quantizing one weight.

Every external int4 format reduces to the same facts: a nibble matrix q [N, K] (0..15), and per
column a group index with one scale (and zero point) per (row, group). `int4_from_groups` turns
those into trikern's `Int4Weight` (kernels/qweight.py), which needs contiguous groups of one size
dividing K:
- ragged groups (GPTQ allows K % group != 0: the last group is short) become the largest group size
  every run of equal group indices is a multiple of, scales repeated (exact, a few more scales);
- act-order (GPTQ `desc_act`: g_idx not sorted) becomes a column permutation `perm`: the weight's
  columns in group order, and the model gathers x[..., perm] before the product.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..kernels.qweight import Fp8Weight, Int4Weight, QuantWeight, cat_rows, pack_int4, quantize_fp8, quantize_int4

# The decoder linears a quantized checkpoint quantizes (GPTQModel's and llm-compressor's defaults):
# every projection of every layer. Embeddings, the head, norms and the draft LoRA stay 16-bit.
LAYER_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")
WEIGHT_KINDS = ("int4", "fp8")
ROW_CHUNK = 256  # rows quantized at a time: bounds the temporaries (fp32, int64 packing) of a large weight


class FormatError(ValueError):
    """A quantized checkpoint trikern cannot read; the message names the file and the tensor (or
    the config key). loading.py re-raises it as its CheckpointError."""


@dataclass(frozen=True)
class Spec:
    """How to quantize weights: "int4" (group-wise, `group` columns per scale, symmetric or with
    zero points) or "fp8" (e4m3, one scale per output row)."""
    weights: str = "int4"
    group: int = 128
    symmetric: bool = True

    def __post_init__(self):
        if self.weights not in WEIGHT_KINDS:
            raise ValueError(f"quantize={self.weights!r}: expected one of {', '.join(WEIGHT_KINDS)}")
        if self.weights == "int4" and (not isinstance(self.group, int) or isinstance(self.group, bool)
                                       or self.group <= 0 or self.group % 8):
            raise ValueError(f"group_size={self.group!r}: expected a positive multiple of 8 (32, 64, 128, ...)")


def linear_names(prefix: str, layers: int) -> list[str]:
    """Module paths (with the checkpoint prefix) of every quantizable linear, in checkpoint order."""
    return [f"{prefix}.layers.{i}.{m}" for i in range(layers) for m in LAYER_LINEARS]


def group_for(K: int, group: int, where: str) -> int:
    """The group size used for a weight with K inputs when `group` is asked for: `group` if it
    divides K, else the largest half, quarter, ... of it (>= 32) that does (the embedded model's
    MLP width 704 takes 64 for 128). compressed-tensors requires K % group == 0, so the choice is
    per weight and recorded in the checkpoint's config."""
    g = group
    while g >= 32 and g % 8 == 0:
        if K % g == 0:
            return g
        g //= 2
    raise FormatError(f"{where}: K={K} inputs is not a multiple of group size {group} or of any of its halves "
                      f">= 32; choose a group size that divides {K}")


def quantize_weight(W: torch.Tensor, spec: Spec, where: str = "weight") -> QuantWeight:
    """Round-to-nearest quantization of one weight [N, K], a few rows at a time (the result is the
    same as in one piece: every row is quantized on its own)."""
    if W.dim() != 2:
        raise FormatError(f"{where}: expected a 2-D weight, got shape {list(W.shape)}")
    N, K = W.shape
    if spec.weights == "fp8":
        parts = [quantize_fp8(W[i:i + ROW_CHUNK]) for i in range(0, N, ROW_CHUNK)]
        return parts[0] if len(parts) == 1 else cat_rows(parts)
    if K % 8:
        raise FormatError(f"{where}: K={K} inputs is not a multiple of 8 (int4 packs 8 columns per int32)")
    g = group_for(K, spec.group, where)
    parts = [quantize_int4(W[i:i + ROW_CHUNK], g, spec.symmetric) for i in range(0, N, ROW_CHUNK)]
    return parts[0] if len(parts) == 1 else cat_rows(parts)


def int4_from_groups(q: torch.Tensor, scales: torch.Tensor, zeros: torch.Tensor | None,
                     g_idx: torch.Tensor | None, where: str) -> tuple[Int4Weight, torch.Tensor | None]:
    """q uint8 [N, K] (0..15); scales [N, G]; zeros uint8 [N, G] or None (every zero point 8);
    g_idx [K] (group of each column; None: contiguous groups of K / G, G dividing K). Returns the
    `Int4Weight` and the column permutation (None when the groups are already in column order).
    `where` names the tensor for errors (the g_idx one when a permutation is involved)."""
    N, K = q.shape
    G = scales.shape[1]
    if g_idx is None:
        if K % G:
            raise FormatError(f"{where}: {G} groups do not divide K={K} and there is no g_idx to place them")
        g_idx = torch.arange(K, device=q.device) // (K // G)
    g_idx = g_idx.to(device=q.device, dtype=torch.long)
    if g_idx.numel() and (int(g_idx.min()) < 0 or int(g_idx.max()) >= G):
        raise FormatError(f"{where}: group indices must lie in [0, {G}); found {int(g_idx.min())}..{int(g_idx.max())}")
    perm = None
    if bool((g_idx[1:] < g_idx[:-1]).any()):  # act-order: put each group's columns together
        perm = torch.argsort(g_idx, stable=True)
        q, g_idx = q[:, perm], g_idx[perm]
    # runs of equal group index; every run must be a multiple of the group size chosen
    change = torch.nonzero(g_idx[1:] != g_idx[:-1]).flatten() + 1
    bounds = [0, *change.tolist(), K]
    group = K
    for a, b in zip(bounds[:-1], bounds[1:]):
        group = math.gcd(group, b - a)
    if group % 8:
        raise FormatError(f"{where}: group boundaries are not on multiples of 8 columns (runs of "
                          f"{sorted({b - a for a, b in zip(bounds[:-1], bounds[1:])})}); trikern's int4 layout needs that")
    idx = g_idx[::group]  # group of each new (finer) group
    s = scales[:, idx].contiguous()
    z = None if zeros is None else zeros[:, idx].contiguous()
    return Int4Weight(pack_int4(q), s, z, group), perm


def refine(w: Int4Weight, group: int) -> Int4Weight:
    """The same weight with smaller groups (`group` divides w.group): scales repeated."""
    if group == w.group:
        return w
    r = w.group // group
    return Int4Weight(w.packed, w.scales.repeat_interleave(r, dim=1),
                      None if w.zeros is None else w.zeros.repeat_interleave(r, dim=1), group)


def stack(ws: list[QuantWeight]) -> QuantWeight:
    """Row-stack the pieces of a fused weight (q/k/v, gate/up): `cat_rows` after giving int4 pieces
    one group size and one zero-point kind (exactly: finer groups, explicit zero points of 8)."""
    if len(ws) == 1:
        return ws[0]
    if all(isinstance(w, Int4Weight) for w in ws):
        g = math.gcd(*(w.group for w in ws))
        ws = [refine(w, g) for w in ws]
        if len({w.zeros is None for w in ws}) > 1:
            ws = [w if w.zeros is not None else
                  Int4Weight(w.packed, w.scales, torch.full_like(w.scales, 8, dtype=torch.uint8), w.group) for w in ws]
    return cat_rows(ws)


def scale_dtype(stored: torch.dtype, model_dtype: torch.dtype) -> torch.dtype:
    """Scales stay in the model dtype when that holds them exactly, else fp32 (fp16 scales of a bf16
    model would lose three mantissa bits)."""
    if stored == model_dtype or (model_dtype == torch.float32 and stored in (torch.float16, torch.bfloat16)):
        return model_dtype
    return torch.float32


def to_device(w: QuantWeight, device) -> QuantWeight:
    if isinstance(w, Fp8Weight):
        return Fp8Weight(w.weight.to(device), w.scale.to(device))
    return Int4Weight(w.packed.to(device), w.scales.to(device), None if w.zeros is None else w.zeros.to(device), w.group)



def checked(src, tname: str, dtypes: tuple, shape: tuple | None, what: str, ok: bool = True) -> torch.Tensor:
    """Tensor `tname` read from `src`, its dtype and shape checked: one error naming file and tensor."""
    t = src.get(tname)
    if t.dtype not in dtypes:
        raise FormatError(f"{src.where(tname)}: tensor '{tname}' is {str(t.dtype).removeprefix('torch.')}; expected "
                          f"{' or '.join(str(d).removeprefix('torch.') for d in dtypes)}")
    if not ok or (shape is not None and tuple(t.shape) != shape):
        raise FormatError(f"{src.where(tname)}: tensor '{tname}' has shape {list(t.shape)}; expected {list(shape)} "
                          f"({what})")
    return t
