"""Quantized weight-only formats: how trikern holds an int4 or fp8 matrix in memory, and the plain
PyTorch math that defines them (dequantization, round-to-nearest quantization).

Every quantized linear kernel (kernels/quant_linear.py) and every checkpoint format reader
(trikern/quant/) meets here: readers convert GPTQ / compressed-tensors tensors to these layouts once
at load time, kernels read only these.

A weight W [N, K] (N outputs, K inputs, as nn.Linear stores it):

- `Int4Weight`, group-wise along K, `group` in {32, 64, 128, ..., K}; K % group == 0, group % 8 == 0:
    packed  int32 [N, K // 8]: nibble j (bits 4j .. 4j+3, unsigned 0..15) of word c is column 8c + j
    scales  [N, K // group], the model dtype (or fp32)
    zeros   uint8 [N, K // group] (0..15), or None: symmetric, every zero point is 8
    W[n, k] = (q[n, k] - zero[n, k // group]) * scale[n, k // group]
- `Fp8Weight`, per output channel:
    weight  float8_e4m3fn [N, K]
    scale   float32 [N]
    W[n, k] = float(weight[n, k]) * scale[n]

Row-stacking two weights of the same format and group (the model's fused qkv / gate_up) stacks every
field along dim 0: `cat_rows`.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

FP8_MAX = 448.0  # largest finite float8_e4m3fn
GROUP_SIZES = (32, 64, 128)


@dataclass
class Int4Weight:
    packed: torch.Tensor
    scales: torch.Tensor
    zeros: torch.Tensor | None
    group: int

    @property
    def shape(self) -> tuple[int, int]:
        return self.packed.shape[0], self.packed.shape[1] * 8

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.packed, self.scales, self.zeros) if t is not None)


@dataclass
class Fp8Weight:
    weight: torch.Tensor
    scale: torch.Tensor

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.weight.shape)

    @property
    def nbytes(self) -> int:
        return self.weight.numel() + self.scale.numel() * self.scale.element_size()


QuantWeight = Int4Weight | Fp8Weight


def check_weight(w, where: str = "quantized weight") -> tuple[int, int]:
    """(N, K) of a well-formed Int4Weight / Fp8Weight; otherwise one error naming the field and what
    is wrong (`where` prefixes it: the op or the checkpoint tensor being read)."""
    if isinstance(w, Fp8Weight):
        t, s = w.weight, w.scale
        if not torch.is_tensor(t) or t.dtype != torch.float8_e4m3fn or t.dim() != 2:
            raise ValueError(f"{where}: Fp8Weight.weight must be a 2-D float8_e4m3fn tensor [N, K]; got "
                             f"{_describe(t)}")
        N, K = t.shape
        if not torch.is_tensor(s) or s.dtype != torch.float32 or tuple(s.shape) != (N,):
            raise ValueError(f"{where}: Fp8Weight.scale must be float32 [N={N}]; got {_describe(s)}")
        if s.device != t.device:
            raise ValueError(f"{where}: Fp8Weight.scale is on {s.device}, Fp8Weight.weight on {t.device}")
        return N, K
    if not isinstance(w, Int4Weight):
        raise TypeError(f"{where}: weight is {type(w).__name__}; expected Int4Weight or Fp8Weight")
    p = w.packed
    if not torch.is_tensor(p) or p.dtype != torch.int32 or p.dim() != 2:
        raise ValueError(f"{where}: Int4Weight.packed must be a 2-D int32 tensor [N, K // 8]; got {_describe(p)}")
    N, K = p.shape[0], p.shape[1] * 8
    g = w.group
    if not isinstance(g, int) or g <= 0 or g % 8 or K % g:
        raise ValueError(f"{where}: Int4Weight.group={g!r} must be a positive multiple of 8 dividing K={K}")
    if (not torch.is_tensor(w.scales) or w.scales.dtype not in (torch.float32, torch.float16, torch.bfloat16)
            or tuple(w.scales.shape) != (N, K // g)):
        raise ValueError(f"{where}: Int4Weight.scales must be float32/float16/bfloat16 [N={N}, K // group="
                         f"{K // g}]; got {_describe(w.scales)}")
    if w.zeros is not None and (not torch.is_tensor(w.zeros) or w.zeros.dtype != torch.uint8
                                or tuple(w.zeros.shape) != (N, K // g)):
        raise ValueError(f"{where}: Int4Weight.zeros must be None or uint8 [N={N}, K // group={K // g}]; got "
                         f"{_describe(w.zeros)}")
    for name in ("scales", "zeros"):
        t = getattr(w, name)
        if t is not None and t.device != p.device:
            raise ValueError(f"{where}: Int4Weight.{name} is on {t.device}, Int4Weight.packed on {p.device}")
    return N, K


def _describe(t) -> str:
    if not torch.is_tensor(t):
        return type(t).__name__
    return f"{t.dtype} {list(t.shape)}"


def unpack_int4(packed: torch.Tensor) -> torch.Tensor:
    """int32 [N, K // 8] -> uint8 [N, K] of nibbles (column 8c + j = nibble j of word c)."""
    shifts = torch.arange(0, 32, 4, device=packed.device, dtype=torch.int32)
    return ((packed.unsqueeze(-1) >> shifts) & 0xF).to(torch.uint8).reshape(packed.shape[0], -1)


def pack_int4(q: torch.Tensor) -> torch.Tensor:
    """uint8 / int [N, K] of values 0..15 (K % 8 == 0) -> int32 [N, K // 8]; inverse of `unpack_int4`."""
    N, K = q.shape
    if K % 8:
        raise ValueError(f"pack_int4: K={K} is not a multiple of 8")
    words = (q.to(torch.int64).reshape(N, K // 8, 8) << torch.arange(0, 32, 4, device=q.device)).sum(-1)
    # Words with bit 31 set are negative int32s (as GPTQ and compressed-tensors store them).
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)


def dequantize(w: QuantWeight, dtype=torch.float32) -> torch.Tensor:
    """The matrix W [N, K] a quantized weight stands for, computed in fp32, returned in `dtype`."""
    if isinstance(w, Fp8Weight):
        return (w.weight.float() * w.scale.float()[:, None]).to(dtype)
    q = unpack_int4(w.packed).float()
    N, K = q.shape
    G = K // w.group
    z = torch.full((N, G), 8.0, device=q.device) if w.zeros is None else w.zeros.float()
    W = (q.view(N, G, w.group) - z[..., None]) * w.scales.float()[..., None]
    return W.reshape(N, K).to(dtype)


def quantize_int4(W: torch.Tensor, group: int = 128, symmetric: bool = True,
                  scale_dtype=None) -> Int4Weight:
    """Round-to-nearest int4 of W [N, K], one scale (and zero point) per `group` columns of a row.
    Symmetric: q = round(W / s) + 8 in [0, 15], s = max|W| / 7 (so -7..7 is used; -8 never);
    asymmetric: s = (max - min) / 15, zero = round(-min / s), q = round(W / s) + zero."""
    N, K = W.shape
    if group <= 0 or K % group or group % 8:
        raise ValueError(f"quantize_int4: group={group} must divide K={K} and be a multiple of 8")
    Wg = W.float().reshape(N, K // group, group)
    if symmetric:
        scale = Wg.abs().amax(-1).clamp_min(1e-10) / 7.0
        zero = None
        q = torch.round(Wg / scale[..., None]).clamp_(-8, 7) + 8
    else:
        lo, hi = Wg.amin(-1).clamp(max=0.0), Wg.amax(-1).clamp(min=0.0)
        scale = ((hi - lo) / 15.0).clamp_min(1e-10)
        zero = torch.round(-lo / scale).clamp_(0, 15)
        q = (torch.round(Wg / scale[..., None]) + zero[..., None]).clamp_(0, 15)
    sd = scale_dtype or W.dtype
    return Int4Weight(pack_int4(q.reshape(N, K).to(torch.uint8)), scale.to(sd),
                      None if zero is None else zero.to(torch.uint8), group)


def quantize_fp8(W: torch.Tensor) -> Fp8Weight:
    """float8_e4m3fn of W [N, K] with one fp32 scale per row: scale = max|W[n]| / 448."""
    Wf = W.float()
    scale = Wf.abs().amax(-1).clamp_min(1e-12) / FP8_MAX
    return Fp8Weight((Wf / scale[:, None]).clamp_(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn), scale)


def cat_rows(ws: list[QuantWeight]) -> QuantWeight:
    """Row-stack weights of one format (and group size): the fused qkv / gate_up of a layer."""
    if all(isinstance(w, Fp8Weight) for w in ws):
        return Fp8Weight(torch.cat([w.weight for w in ws]), torch.cat([w.scale for w in ws]))
    if not all(isinstance(w, Int4Weight) for w in ws):
        raise ValueError("cat_rows: weights of different formats")
    groups = {w.group for w in ws}
    if len(groups) != 1 or len({w.zeros is None for w in ws}) != 1:
        raise ValueError(f"cat_rows: int4 weights with different group sizes {sorted(groups)} or zero-point kinds")
    zeros = None if ws[0].zeros is None else torch.cat([w.zeros for w in ws])
    return Int4Weight(torch.cat([w.packed for w in ws]), torch.cat([w.scales for w in ws]), zeros, ws[0].group)
