"""Weight-only quantized linear on the CPU: x @ dequantize(w).T for an Int4Weight or Fp8Weight
(kernels/qweight.py), by the fastest of a few products, chosen by measurement.

The products, each on a copy of the weight made once:
- "int4mm": torch's CPU int4 kernel (`aten._weight_int4pack_mm_for_cpu`), which reads 4-bit
  nibbles and dequantizes as it multiplies. Its own layout: the nibbles repacked as uint8 [N, K / 2]
  and the scales with zero offsets as [K / group, N, 2] in x's dtype -- about the int4 weight's size
  again. Only int4 with N % 16 == 0 and group 32 / 64 / 128 / 256.
- "packed" (bf16): the dequantized weight rounded to bf16 and laid out once for oneDNN, as the dense
  model's own products are (kernels/cpu/linear.py): 2 bytes per weight. On a CPU oneDNN cannot pack
  bf16 for, "plain" (F.linear on the bf16 copy) takes its place.
- "wide": the dequantized weight in fp32, pre-transposed, multiplied by MKL (bf16 rows widened,
  the result rounded back): 4 bytes per weight, made only for weights of at most
  `cpu/linear.py`'s MAX_WIDE_BYTES (bf16) -- past that a product is bound by reading the weight. For
  fp32 activations it is the dense product itself, at any size.
The packed and plain copies round W to bf16, as a bf16 checkpoint's weights are; int4mm rounds its
scales and zero offsets to x's dtype; wide is exact up to summation order.

The first product of each (shape, format, dtype, row bucket, thread count) in a process times every
product that applies, in alternation (this machine's speed drifts), and keeps the fastest; the
result is bound to its copy, so a later call costs a dict lookup, a freshness check and the product
-- less than the dense model's own linear, which checks its weight's layout on every call.
`TRIKERN_CPU_QUANT=int4mm` (or `dense`) skips the timing for int4mm (or the dense products).

Memory, honestly: a weight keeps the copies its chosen products read, no others -- typically int4mm
for one-row steps and packed for wider ones, i.e. up to the dense bf16 model's weight memory on top
of the quantized one, plus the fp32 copy for small weights where wide wins. This trades memory for
"never slower than the dense model" at decoding's row counts, which is what the small models run on
CPUs need; `TRIKERN_CPU_QUANT=int4mm` keeps int4 weights at ~2x their size (fp8 and odd int4
shapes have no int4 product and still make a dense copy).

Copies are made on first use and again when a field of the weight is replaced or changed in place.
fp16 activations (the CPU computes fp16 in software) go through the fp32 products; autograd takes
the reference.
"""
from __future__ import annotations

import os
import time

import torch

from ... import warmup
from ..quant_linear import quant_linear_ref
from ..qweight import Fp8Weight, Int4Weight, QuantWeight, check_weight, dequantize, unpack_int4
from . import linear as cpu_linear

INT4MM, PACKED, PLAIN, WIDE = "int4mm", "packed", "plain", "wide"
INT4MM_GROUPS = (32, 64, 128, 256)
_ROUNDS, _REPS = 9, 4  # a one-off per (shape, row bucket): ~1-10 ms, robust to drift
_aten = torch.ops.aten
_int4mm_op = getattr(_aten, "_weight_int4pack_mm_for_cpu", None)
_int4mm_convert = getattr(_aten, "_convert_weight_to_int4pack_for_cpu", None)
_mkldnn = getattr(torch.ops, "mkldnn", None)
_choices: dict[tuple, str] = {}  # (N, K, format, dtype, row bucket, threads) -> product name


def forced() -> str | None:
    """What `TRIKERN_CPU_QUANT` forces: "int4mm", "dense" or None (measure)."""
    v = os.environ.get("TRIKERN_CPU_QUANT", "").strip().lower()
    if v in ("", "auto"):
        return None
    if v not in (INT4MM, "dense"):
        raise ValueError(f"TRIKERN_CPU_QUANT={v!r}: expected 'int4mm', 'dense' or 'auto'")
    return v


def int4mm_fits(w: QuantWeight) -> bool:
    """Whether torch's CPU int4 kernel takes this weight."""
    return (_int4mm_op is not None and _int4mm_convert is not None and isinstance(w, Int4Weight)
            and w.shape[0] % 16 == 0 and w.group in INT4MM_GROUPS)


def _fields(w: QuantWeight) -> tuple:
    return (w.weight, w.scale) if isinstance(w, Fp8Weight) else (w.packed, w.scales, w.zeros)


class _Copies:
    """One weight's copies for one compute dtype (bf16 or fp32), the products bound to them by row
    count, and the facts that say they are current."""

    def __init__(self, w: QuantWeight, dtype: torch.dtype):
        self.N, self.K = w.shape
        self.dtype = dtype
        self.int4 = isinstance(w, Int4Weight)
        self.sources = _fields(w)  # the tensors copied from
        # An inference-mode tensor has no version counter (it cannot change in place either).
        self.tracked = [t for t in self.sources if t is not None and not t.is_inference()]
        self.versions = [t._version for t in self.tracked]
        self.made: dict[str, object] = {}  # product name -> its copy
        self.paths: dict[tuple, object] = {}  # (rows, threads) -> the bound product: the per-call lookup
        self.chosen: dict[tuple, str] = {}  # (rows, threads) -> product name, for reports

    def current(self, w: QuantWeight) -> bool:
        """Whether w still holds the tensors the copies came from (the same objects, unchanged in
        place). Called on every product, hence spelled out."""
        s = self.sources
        if self.int4:
            if w.packed is not s[0] or w.scales is not s[1] or w.zeros is not s[2]:
                return False
        elif w.weight is not s[0] or w.scale is not s[1]:
            return False
        return not self.tracked or [t._version for t in self.tracked] == self.versions


_KEYS = {torch.bfloat16: "_cpu_quant_bfloat16", torch.float32: "_cpu_quant_float32"}
_NONE: dict = {}


def _copies(w: QuantWeight, dtype: torch.dtype) -> _Copies:
    c = w.__dict__.get(_KEYS[dtype])
    if c is None or not c.current(w):
        check_weight(w, "quant_linear")  # once per weight (and again whenever it changes)
        c = w.__dict__[_KEYS[dtype]] = _Copies(w, dtype)
    return c


# ---------------------------------------------------------------- the products

def _candidates(w: QuantWeight, c: _Copies) -> list[str]:
    """The products that apply to this weight and dtype, under TRIKERN_CPU_QUANT."""
    dense = [WIDE] if c.dtype == torch.float32 else [PACKED if cpu_linear.can_pack else PLAIN]
    if c.dtype == torch.bfloat16 and c.N * c.K * 4 <= cpu_linear.MAX_WIDE_BYTES:
        dense.append(WIDE)
    if not int4mm_fits(w):
        return dense
    f = forced()
    return [INT4MM] if f == INT4MM else dense if f == "dense" else [INT4MM, *dense]


def _make(name: str, w: QuantWeight, c: _Copies):
    """The copy product `name` reads (made once, kept while a choice binds it or a timing needs it)."""
    copy = c.made.get(name)
    if copy is not None:
        return copy
    if name == INT4MM:
        q = unpack_int4(w.packed).to(torch.int32)
        s = w.scales.float()
        z = 8.0 if w.zeros is None else w.zeros.float()
        # the kernel computes (q - 8) * scale + offset; ours is (q - zero) * scale
        sz = torch.stack([s.t(), ((8.0 - z) * s).t()], dim=-1).to(c.dtype).contiguous()
        copy = (_int4mm_convert(q, 1), sz)  # innerKTiles: unused by the CPU layout
    elif name == WIDE:
        copy = dequantize(w).t().contiguous()
    else:
        W = dequantize(w, torch.bfloat16)
        copy = _mkldnn._reorder_linear_weight(W, 1) if name == PACKED else W
    c.made[name] = copy
    return copy


def _bind(name: str, w: QuantWeight, c: _Copies):
    """Product `name` as a call `(x) -> x @ W.T` in x's dtype, its copy bound."""
    copy = _make(name, w, c)
    if name == INT4MM:
        packed, sz = copy
        group = w.group
        return lambda x: _int4mm_op(x, packed, group, sz)
    if name == WIDE:
        if c.dtype == torch.float32:
            return lambda x: torch.mm(x, copy)
        return lambda x: torch.mm(x.float(), copy).to(torch.bfloat16)
    if name == PACKED:
        return lambda x: _mkldnn._linear_pointwise(x, copy, None, "none", [], "")
    return lambda x: torch.nn.functional.linear(x, copy)


def _measure(x, calls: dict) -> str:
    best = {name: float("inf") for name in calls}
    for fn in calls.values():  # first calls warm caches and oneDNN's primitives: not timed
        fn(x)
    for _ in range(_ROUNDS):
        for name, fn in calls.items():
            t = time.perf_counter()
            for _ in range(_REPS):
                fn(x)
            best[name] = min(best[name], time.perf_counter() - t)
    return min(best, key=best.get)


def _choose(x, w, c) -> str:
    names = _candidates(w, c)
    if len(names) == 1:
        return names[0]
    fmt = f"int4g{w.group}{'z' if w.zeros is not None else ''}" if c.int4 else "fp8"
    key = (c.N, c.K, fmt, c.dtype, 1 << max(x.shape[0] - 1, 0).bit_length(), torch.get_num_threads())
    choice = _choices.get(key)
    if choice is None:
        warmup.bump()  # a decode step that timed a product is not a steady-state step
        choice = _choices[key] = _measure(x, {n: _bind(n, w, c) for n in names})
    return choice


def _settle(key, name: str, w: QuantWeight, c: _Copies):
    c.chosen[key] = name
    c.paths[key] = _bind(name, w, c)
    for other in set(c.made) - set(c.chosen.values()):  # timed and lost everywhere: free its copy
        del c.made[other]
    return c.paths[key]


# ---------------------------------------------------------------- the op

def quant_linear(x: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    """x [..., K] @ dequantize(w).T -> [..., N] in x's dtype, on CPU tensors."""
    # The decode step's call (2-D contiguous rows, a weight and row count seen before) costs a dict
    # lookup and a freshness check on top of the product.
    c = getattr(w, "__dict__", _NONE).get(_KEYS.get(x.dtype, ""))
    if (c is not None and x.dim() == 2 and x.shape[1] == c.K and not x.requires_grad and x.is_contiguous()
            and x.is_cpu and c.current(w)):
        path = c.paths.get((x.shape[0], torch.get_num_threads()))
        if path is not None:
            return path(x)
    return _general(x, w)


def chosen_path(w: QuantWeight, dtype: torch.dtype, rows: int) -> str | None:
    """The product that rows x `dtype` activations take on w at this thread count (None: not chosen yet)."""
    c = getattr(w, "__dict__", _NONE).get(_KEYS.get(torch.float32 if dtype == torch.float16 else dtype, ""))
    return None if c is None else c.chosen.get((rows, torch.get_num_threads()))


def _general(x: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    N, K = check_weight(w, "quant_linear")
    if x.shape[-1:] != (K,):
        raise ValueError(f"quant_linear: x has shape {tuple(x.shape)}; its last dim must be the weight's "
                         f"K={K} (weight [N={N}, K={K}])")
    dev = _fields(w)[0].device
    if not x.is_cpu or dev.type != "cpu":
        raise RuntimeError(f"quant_linear (cpu): x is on {x.device}, the weight on {dev}; both must be on the CPU")
    if x.dtype not in (torch.float32, torch.float16, torch.bfloat16) or (torch.is_grad_enabled() and x.requires_grad):
        return quant_linear_ref(x, w)
    lead = x.shape[:-1]
    dtype = torch.float32 if x.dtype == torch.float16 else x.dtype
    x2 = x.reshape(-1, K).to(dtype).contiguous()
    if x2.shape[0] == 0 or N == 0 or K == 0:
        return torch.zeros(*lead, N, dtype=x.dtype)
    c = _copies(w, dtype)
    key = (x2.shape[0], torch.get_num_threads())
    path = c.paths.get(key)
    if path is None:
        path = _settle(key, _choose(x2, w, c), w, c)
    return path(x2).to(x.dtype).view(*lead, N)
