"""CPU matmuls at decoding's row counts (bf16 and fp32 inference): each weight laid out once, for the
faster of two paths, chosen by measurement.

PyTorch's CPU `F.linear` on bf16 lays the weight out for oneDNN again on every call; at decoding's
batch sizes that costs more than the product (2-3x at the embedded model's sizes, measured here).
Laying it out once, as torch.compile's CPU freezing does, gives the same bits faster ("packed").

Even packed, a oneDNN bf16 product pays ~40 us per call on this project's CPU whatever its size,
while MKL's fp32 product on a pre-transposed fp32 copy of a small weight takes 10-30 us ("wide":
the input widened, the output rounded back to bf16; bf16 x bf16 products are exact in fp32 and both
paths sum in fp32, so they differ only in summation order, at most an ulp of the bf16 result).
fp32 weights have the same two layouts without the casts: `F.linear` on the weight as stored
("plain") or MKL's product on its transposed copy ("wide"), which streams the weight in the order
the product reads it: a whole forward of the embedded model ran 9-33% faster that way on a 2-core
EPYC (1-32 rows, weights read from memory, not cache); on large weights it was as often slower.
Which is faster depends on the CPU, the shape, the row count and the thread count, so the first
call of each (shape, row bucket, threads, dtype) in a process times both and keeps the winner
(`TRIKERN_CPU_LINEAR=packed|wide` forces one; "packed" means plain where there is no packed copy).
A wide copy is made only for weights of at most `MAX_WIDE_BYTES` in fp32: past that a product is
bound by reading the weight, and a bf16 weight's fp32 copy reads twice the bytes.
A CPU that oneDNN cannot pack bf16 for (AVX2 only: cpu_features.py) has no packed path: plain
`F.linear` takes its place, and wide is timed against it at every row count, since such a CPU
multiplies bf16 in software; fp32 is timed the same way everywhere.

The copies are made on first use and made again whenever the weight changes (its version counter
or storage), so a trained or edited weight is never read stale; they cost the packed copy (the bf16
size) and, for small weights, the wide one (fp32: the weight's size again). Anything else -- other
dtypes or devices, autograd -- takes `F.linear`.
"""
from __future__ import annotations

import os
import time

import torch
import torch.nn.functional as F

from ... import cpu_features, warmup

_mkldnn = getattr(torch.ops, "mkldnn", None)
enabled = True  # off: every product takes F.linear (tests compare against it)
# Whether oneDNN packs bf16 weights here: the op exists in this build and the CPU has what it needs.
can_pack = bool(torch.backends.mkldnn.is_available() and _mkldnn is not None
                and hasattr(_mkldnn, "_reorder_linear_weight") and hasattr(_mkldnn, "_linear_pointwise")
                and cpu_features.detect().onednn_bf16)

PACKED, WIDE, PLAIN = "packed", "wide", "plain"
MAX_WIDE_BYTES = 8 << 20
MAX_WIDE_ROWS = 32  # above this many rows oneDNN's packed bf16 compute wins outright: not worth timing
_ROUNDS, _REPS = 5, 3
_choices: dict[tuple, str] = {}  # (out, in, row bucket, threads, dtype) -> PACKED / PLAIN / WIDE
DTYPES = (torch.bfloat16, torch.float32)


def forced() -> str | None:
    """The path `TRIKERN_CPU_LINEAR` forces (None: measure)."""
    v = os.environ.get("TRIKERN_CPU_LINEAR", "").strip().lower()
    if v in ("", "auto"):
        return None
    if v not in (PACKED, WIDE):
        raise ValueError(f"TRIKERN_CPU_LINEAR={v!r}: expected 'packed', 'wide' or 'auto'")
    return v


class _Layouts:
    __slots__ = ("stamp", "weight", "packed", "wide", "paths")

    def __init__(self, stamp, weight, packed, wide):
        self.stamp, self.weight, self.packed, self.wide = stamp, weight, packed, wide
        self.paths: dict[tuple, object] = {}  # (rows, threads) -> _packed / _wide: the per-call lookup


def _packed(x, lay):
    return _mkldnn._linear_pointwise(x.contiguous(), lay.packed, None, "none", [], "")


def _plain(x, lay):
    return F.linear(x, lay.weight)


def _wide(x, lay):
    return torch.mm(x.float(), lay.wide).to(x.dtype)


def _layouts(weight, holder):
    # An inference-mode tensor has no version counter (it cannot change in place either).
    stamp = (weight._version if not weight.is_inference() else -1, weight.data_ptr())
    lay = holder.__dict__.get("_cpu_layouts")
    if lay is None or lay.stamp != stamp:
        packed = _mkldnn._reorder_linear_weight(weight, 1) if can_pack and weight.dtype == torch.bfloat16 else None
        wide = weight.t().float().contiguous() if weight.numel() * 4 <= MAX_WIDE_BYTES else None
        lay = holder.__dict__["_cpu_layouts"] = _Layouts(stamp, weight, packed, wide)
    return lay


def _measure(x, lay) -> str:
    """The faster path for this product, timed in alternation (this machine's speed drifts)."""
    paths = ((PACKED, _packed) if lay.packed is not None else (PLAIN, _plain), (WIDE, _wide))
    best = {name: float("inf") for name, _ in paths}
    for _ in range(_ROUNDS):
        for name, fn in paths:
            t = time.perf_counter()
            for _ in range(_REPS):
                fn(x, lay)
            best[name] = min(best[name], time.perf_counter() - t)
    return min(best, key=best.get)


def _narrow(lay) -> str:
    return PACKED if lay.packed is not None else PLAIN


def _choose(x, weight, lay) -> str:
    rows = x.shape[0]
    if lay.wide is None or (rows > MAX_WIDE_ROWS and lay.packed is not None):
        return _narrow(lay)
    key = (*weight.shape, 1 << max(rows - 1, 0).bit_length(), torch.get_num_threads(), weight.dtype)
    choice = _choices.get(key)
    if choice is None:
        choice = forced()
        if choice == PACKED:
            choice = _narrow(lay)  # a setting carried over from a CPU that packs: the same bits here
        if choice is None:
            warmup.bump()  # a decode step that timed a product is not a steady-state step
            choice = _measure(x, lay)
        _choices[key] = choice
    return choice


def linear(x: torch.Tensor, weight: torch.Tensor, holder) -> torch.Tensor:
    """x @ weight.T; `holder` (the module that owns the weight) keeps the laid-out copies."""
    if not (enabled and weight.is_cpu and weight.dtype in DTYPES and x.dtype == weight.dtype
            and x.dim() == 2 and x.is_cpu and not torch.is_grad_enabled()):
        return F.linear(x, weight)
    lay = _layouts(weight, holder)
    key = (x.shape[0], torch.get_num_threads())
    path = lay.paths.get(key)
    if path is None:
        path = lay.paths[key] = {WIDE: _wide, PACKED: _packed, PLAIN: _plain}[_choose(x, weight, lay)]
    return path(x, lay)
