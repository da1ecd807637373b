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
An fp32 weight has a third way, no copy needed ("transposed"): the product computed as W @ x^T and
transposed back, which hands MKL the weight as its left operand. On an AVX2-only EPYC (1 thread) a
whole forward's products at 4 rows took 3.2 ms that way against 4.2 wide and 4.9 plain (at 1 row
2.6 against wide's 2.0; 8 rows 5.2 against 5.4; 16 rows slower): MKL's kernel for a few columns of
a tall left operand beats its kernel for a few rows of a wide right one there.
Which is faster depends on the CPU, the shape, the row count and the thread count, so the first
call of each (shape, row count, threads, dtype) in a process times the paths and keeps the winner
(`TRIKERN_CPU_LINEAR=packed|wide|transposed` forces one; "packed" means plain where there is no packed
copy, "transposed" means the narrow path for a bf16 weight).
Row counts are told apart up to `MAX_WIDE_ROWS` (MKL's kernels are not monotone in them: on that
EPYC transposed won at 4, 6, 8 and 16 rows and lost at 3 and 12), past it by power-of-2 buckets.
Each timed call starts with the weight out of the CPU's caches, as a forward reads it (a model's
weights outgrow the last-level cache, and the next product's weight evicts this one): timed warm,
the wide path won at 4 rows on that EPYC, and a batched AR step of 4 users took 10.1 ms with it
against 8.3 with transposed.
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

PACKED, WIDE, PLAIN, TRANSPOSED = "packed", "wide", "plain", "transposed"
MAX_WIDE_BYTES = 8 << 20
MAX_WIDE_ROWS = 32  # above this many rows oneDNN's packed bf16 compute wins outright: not worth timing
_ROUNDS = 5
# Read between timed calls to push the weight out of the caches; kept for the process (1.5x the
# last-level cache, at most 96 MiB) since products at new row counts are timed as they come.
_sweep: torch.Tensor | None = None
_choices: dict[tuple, str] = {}  # (out, in, row bucket, threads, dtype) -> a path's name
DTYPES = (torch.bfloat16, torch.float32)


def forced() -> str | None:
    """The path `TRIKERN_CPU_LINEAR` forces (None: measure)."""
    v = os.environ.get("TRIKERN_CPU_LINEAR", "").strip().lower()
    if v in ("", "auto"):
        return None
    if v not in (PACKED, WIDE, TRANSPOSED):
        raise ValueError(f"TRIKERN_CPU_LINEAR={v!r}: expected 'packed', 'wide', 'transposed' or 'auto'")
    return v


class _Layouts:
    __slots__ = ("stamp", "weight", "packed", "wide", "paths")

    def __init__(self, stamp, weight, packed, wide):
        self.stamp, self.weight, self.packed, self.wide = stamp, weight, packed, wide
        self.paths: dict[tuple, object] = {}  # (rows, threads) -> the chosen path's function


def _packed(x, lay):
    return _mkldnn._linear_pointwise(x.contiguous(), lay.packed, None, "none", [], "")


def _plain(x, lay):
    return F.linear(x, lay.weight)


def _wide(x, lay):
    return torch.mm(x.float(), lay.wide).to(x.dtype)


def _transposed(x, lay):
    # Contiguous again: q / k / v are head-range views of the qkv product's rows.
    return torch.mm(lay.weight, x.t()).t().contiguous()


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
    paths = [(PACKED, _packed) if lay.packed is not None else (PLAIN, _plain)]
    paths += [(WIDE, _wide)] * (lay.wide is not None) + [(TRANSPOSED, _transposed)] * _has_transposed(lay)
    best = {name: float("inf") for name, _ in paths}
    for _ in range(_ROUNDS):
        for name, fn in paths:
            _evict()
            t = time.perf_counter()
            fn(x, lay)
            best[name] = min(best[name], time.perf_counter() - t)
    return min(best, key=best.get)


def _evict():
    global _sweep
    if _sweep is None:
        _sweep = torch.ones(min(cpu_features.last_level_cache_bytes() * 3 // 2, 96 << 20) // 4)
    _sweep.sum()


def row_bucket(rows: int) -> int:
    """The row counts one measured choice serves: each up to MAX_WIDE_ROWS, then powers of 2."""
    return rows if rows <= MAX_WIDE_ROWS else 1 << (rows - 1).bit_length()


def _narrow(lay) -> str:
    return PACKED if lay.packed is not None else PLAIN


def _has_transposed(lay) -> bool:
    return lay.weight.dtype == torch.float32  # a bf16 weight would need an fp32 copy in its own layout


def _choose(x, weight, lay) -> str:
    rows = x.shape[0]
    if (lay.wide is None and not _has_transposed(lay)) or (rows > MAX_WIDE_ROWS and lay.packed is not None):
        return _narrow(lay)
    key = (*weight.shape, row_bucket(rows), torch.get_num_threads(), weight.dtype)
    choice = _choices.get(key)
    if choice is None:
        choice = forced()
        if choice == PACKED or (choice == TRANSPOSED and not _has_transposed(lay)) or \
                (choice == WIDE and lay.wide is None):
            choice = _narrow(lay)  # a forced path this weight lacks (a setting from another CPU or dtype)
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
        path = lay.paths[key] = {WIDE: _wide, PACKED: _packed, PLAIN: _plain,
                                 TRANSPOSED: _transposed}[_choose(x, weight, lay)]
    return path(x, lay)
