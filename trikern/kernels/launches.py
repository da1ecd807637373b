"""Counting the device kernels a piece of code launches: Triton launches plus the torch ops that do work.

    with launches.counting() as c:
        model(tokens, positions, cache, CAUSAL, write_cache=True)
    c.total, c.triton, c.torch, c.by_name()

Issue 20 asks for a decode layer of at most 5 launches, counted on a CPU as well as on a GPU. Two
sources, counted apart and never twice:

- Triton launches: `JITFunction.run` (compiled, CUDA) and the interpreter's `InterpretedFunction.run`
  (TRITON_INTERPRET=1) are wrapped for the duration of the block. Both are what `kernel[grid](...)`
  calls on every triton version trikern supports (3.6 on the GPU image, 3.9 here); triton's own
  `knobs.runtime.launch_enter_hook` fires for compiled kernels only, not under the interpreter, so
  it is not used. A launch counts once, by the kernel's name, when `run` returns with `warmup` false
  and a grid with no zero dimension (an empty grid launches nothing). Triton's `Autotuner` and
  `Heuristics` wrappers end in the same `run`, so they count once too.
- torch ops: a `TorchDispatchMode` sees every op that reaches the dispatcher below autograd (one
  count per op: ops a kernel implementation calls internally are not seen again; a composite op
  such as linear, which inference_mode lets through whole, is counted as the ops it decomposes
  into, as it arrives with autograd on). An op counts unless it does not touch data on the device:
    * views and aliases: any op whose schema returns an alias of an input without writing it (view,
      select, slice, split, unbind, detach, as_strided, t, transpose, expand, unsqueeze, squeeze,
      permute, alias, lift_fresh, ...), plus `_unsafe_view` / `_reshape_alias` (views the schema
      does not mark) and the ops tagged `inplace_view` (resize_, set_, squeeze_, ...);
    * allocations (empty, empty_like, empty_strided, new_empty, ...) and metadata reads (sym_size,
      is_same_size, ...);
    * `_local_scalar_dense` (`.item()`): a copy to the host and a sync, no kernel; counted apart in
      `host_reads`;
    * an op whose every tensor output is empty (nothing to launch for), and one that neither takes
      nor returns a tensor (`promote_types`: arithmetic on dtypes).
  While a Triton launch runs, torch ops are not counted: they are the launcher's own bookkeeping
  (the interpreter copies arguments through torch), and on a GPU `run` issues none.

  One counted op is taken as one kernel. cuBLAS may launch two for one matmul (split-K with a
  reduction) and a cast or copy between host and device is a memcpy: the count is of launches as
  the code asks for them, which is what fusion changes.

Also recorded: what the autotuner answered (`autotune.choose`) during the block, per op, and
whether its candidates included torch's own path (`TORCH`), so a report can say which path ran.

Count a steady-state call: the first call of a shape tunes (the tuner launches every config many
times) and compiles; `count_calls(fn)` runs `fn` once before counting. Triton launches count
from any thread, torch ops only from the thread that opened the block (a dispatch mode is per
thread): count where one thread does the work. Blocks may nest: each sees what ran inside it.
"""
from __future__ import annotations

import contextlib
import functools
import threading
from collections import Counter
from dataclasses import dataclass, field

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

# Ops that launch nothing although their schema does not say so (see the module docstring).
UNMARKED_VIEWS = frozenset({"_unsafe_view", "_reshape_alias"})
ALLOC_OR_METADATA = frozenset({
    "empty", "empty_like", "empty_strided", "new_empty", "new_empty_strided", "empty_permuted", "sym_size",
    "sym_stride", "sym_numel", "sym_storage_offset", "size", "stride", "numel", "is_same_size",
    "_has_compatible_shallow_copy_type", "record_stream", "_nested_tensor_size",
})
HOST_READ = "_local_scalar_dense"


@dataclass(eq=False)  # blocks are told apart by identity (nested blocks may hold equal counts)
class Counts:
    """What one counted block launched. `triton` and `torch`: kernel / op name -> launches;
    `skipped`: the torch ops seen but not counted, with why ("view", "alloc/metadata", "empty", "no
    tensor"); `host_reads`: `.item()`-style copies to the host;
    `choices`: autotuned op -> the configs chosen (as text), `torch_candidates`: the tuned ops whose
    candidates included torch's own path."""
    triton: Counter = field(default_factory=Counter)
    torch: Counter = field(default_factory=Counter)
    skipped: Counter = field(default_factory=Counter)
    host_reads: int = 0
    choices: dict = field(default_factory=dict)
    torch_candidates: set = field(default_factory=set)

    @property
    def triton_launches(self) -> int:
        return sum(self.triton.values())

    @property
    def torch_ops(self) -> int:
        return sum(self.torch.values())

    @property
    def total(self) -> int:
        return self.triton_launches + self.torch_ops

    def by_name(self) -> dict[str, int]:
        """Every counted kernel, Triton's as `triton:<kernel>` and torch's as `aten.<op>`, most first."""
        merged = Counter({f"triton:{k}": v for k, v in self.triton.items()})
        merged.update(self.torch)
        return dict(sorted(merged.items(), key=lambda kv: (-kv[1], kv[0])))

    def paths(self) -> dict[str, str]:
        """The tuned ops that had torch's own path among their candidates (quant_linear, the fused
        linears) -> the path they took: "torch", "triton" (or both, " | "-joined, when several shapes
        of the op ran and chose differently)."""
        return {op: " | ".join(sorted({"torch" if "TORCH" in c else "triton" for c in cfgs}))
                for op, cfgs in self.choices.items() if op in self.torch_candidates}

    def configs(self) -> dict[str, list[str]]:
        """Every tuned op -> the configs the tuner answered, as text."""
        return {op: sorted(c) for op, c in self.choices.items()}

    def as_dict(self) -> dict:
        return {"total": self.total, "triton_launches": self.triton_launches, "torch_ops": self.torch_ops,
                "by_name": self.by_name(), "skipped": dict(self.skipped), "host_reads": self.host_reads,
                "autotune": self.configs(), "paths": self.paths()}


# -- the hooks (installed while at least one block is open) -----------------------------------------------
_lock = threading.RLock()
_open: list[Counts] = []
_saved: dict = {}
_INHERITED = object()
_local = threading.local()  # .depth: Triton launches running in this thread


def _in_launch() -> bool:
    return getattr(_local, "depth", 0) > 0


def _grid_launches(grid) -> bool:
    if callable(grid):  # evaluated by triton from the bound arguments; assume it is not empty
        return True
    dims = tuple(grid) if isinstance(grid, (tuple, list)) else (grid,)
    return all(int(d) > 0 for d in dims)


def _kernel_name(fn) -> str:
    inner = getattr(fn, "fn", None)
    return getattr(inner, "__name__", None) or getattr(fn, "__name__", None) or type(fn).__name__


def _wrap_run(orig):
    @functools.wraps(orig)
    def run(self, *args, grid, warmup, **kwargs):
        if warmup:
            return orig(self, *args, grid=grid, warmup=warmup, **kwargs)
        _local.depth = getattr(_local, "depth", 0) + 1
        try:
            out = orig(self, *args, grid=grid, warmup=warmup, **kwargs)
        finally:
            _local.depth -= 1
        if _local.depth == 0 and _grid_launches(grid):
            name = _kernel_name(self)
            with _lock:
                for c in _open:
                    c.triton[name] += 1
        return out
    run.__trikern_counting__ = True
    return run


def _wrap_choose(orig):
    @functools.wraps(orig)
    def choose(op, key, configs, run):
        cfg = orig(op, key, configs, run)
        text = " ".join(f"{k}={v}" for k, v in cfg.items())
        has_torch = any("TORCH" in c for c in configs)
        with _lock:
            for c in _open:
                c.choices.setdefault(op, set()).add(text)
                if has_torch:
                    c.torch_candidates.add(op)
        return cfg
    return choose


def _launch_classes():
    """The classes whose `run` is one launch: the compiled JIT function and the interpreter's."""
    from triton.runtime.jit import JITFunction  # noqa: PLC0415

    out = [JITFunction]
    with contextlib.suppress(ImportError):
        from triton.runtime.interpreter import InterpretedFunction  # noqa: PLC0415
        out.append(InterpretedFunction)
    return out


def _install():
    from . import autotune  # noqa: PLC0415

    for cls in _launch_classes():
        _saved[cls] = cls.__dict__.get("run", _INHERITED)  # a later triton may define it on a base class
        cls.run = _wrap_run(cls.run)
    _saved[autotune] = autotune.choose
    autotune.choose = _wrap_choose(autotune.choose)


def _uninstall():
    for owner, orig in _saved.items():
        if not isinstance(owner, type):
            owner.choose = orig
        elif orig is _INHERITED:
            del owner.run
        else:
            owner.run = orig
    _saved.clear()


def _why_not_counted(func, args, out) -> str | None:
    """None when the op launches a kernel, else the reason it does not (see the module docstring)."""
    name = func._schema.name.split("::")[-1]
    if name == HOST_READ:
        return "host read"
    if name in ALLOC_OR_METADATA:
        return "alloc/metadata"
    if name in UNMARKED_VIEWS or torch.Tag.inplace_view in func.tags:
        return "view"
    if any(r.alias_info is not None and not r.alias_info.is_write for r in func._schema.returns):
        return "view"
    outs = [t for t in (out if isinstance(out, (tuple, list)) else (out,)) if isinstance(t, torch.Tensor)]
    if outs and all(t.numel() == 0 for t in outs):
        return "empty"
    if not outs and not any(isinstance(a, torch.Tensor) for a in tree_flatten(args)[0]):
        return "no tensor"
    return None


class _OpCounter(TorchDispatchMode):
    def __init__(self, counts: Counts):
        super().__init__()
        self.counts = counts

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        # Under inference_mode a composite op (linear, item, rms_norm, ...) reaches this mode whole,
        # where with autograd on it arrives as the ops it is made of: count those either way.
        if not _in_launch() and torch._C._dispatch_has_kernel_for_dispatch_key(func.name(), "CompositeImplicitAutograd"):
            with self:
                out = func.decompose(*args, **kwargs)
            if out is not NotImplemented:
                return out
        out = func(*args, **kwargs)
        if not _in_launch():
            why = _why_not_counted(func, (args, kwargs), out)
            name = f"{func.namespace}.{func._schema.name.split('::')[-1]}"
            if why is None:
                self.counts.torch[name] += 1
            elif why == "host read":
                self.counts.host_reads += 1
            else:
                self.counts.skipped[f"{name} ({why})"] += 1
        return out


@contextlib.contextmanager
def counting():
    """Count the kernels launched inside the block into the `Counts` it yields (see the module docstring)."""
    counts = Counts()
    with _lock:
        if not _open:
            _install()
        _open.append(counts)
    try:
        with _OpCounter(counts):
            yield counts
    finally:
        with _lock:
            del _open[next(i for i, c in enumerate(_open) if c is counts)]
            if not _open:
                _uninstall()


def count_calls(fn, warmup: int = 1) -> Counts:
    """The kernels one call of `fn()` launches, after `warmup` uncounted calls (compiles, tuning)."""
    if warmup < 0:
        raise ValueError(f"count_calls: warmup={warmup} must be >= 0")
    for _ in range(warmup):
        fn()
    with counting() as c:
        fn()
    return c


def split_layers(full: Counts | int, layers: int, fewer: Counts | int, fewer_layers: int) -> dict:
    """Per-layer and non-layer (embedding, final norm, head) kernels from two counts of the same
    forward on models that differ only in their layer count: per layer = the difference / the
    difference in layers; the rest = what the full count has beyond `layers` of them. `exact` says
    whether the difference divides evenly (it does when every layer launches the same kernels)."""
    a = full.total if isinstance(full, Counts) else int(full)
    b = fewer.total if isinstance(fewer, Counts) else int(fewer)
    if layers == fewer_layers:
        raise ValueError(f"split_layers: layers={layers} and fewer_layers={fewer_layers} must differ")
    per = (a - b) / (layers - fewer_layers)
    return {"per_layer": per, "non_layer": a - layers * per, "exact": (a - b) % (layers - fewer_layers) == 0,
            "layers": layers, "total": a}
