"""How the driver (driver.py) runs and times a step's device work.

- `StepRunner`: runs a step's passes eagerly, or on CUDA as CUDA graphs captured per (pass, shape)
  key; a replay hands back copies of the graph's outputs, so no strategy has to remember that the
  next replay overwrites them. Warm-up work (the eager first call, a capture) bumps trikern.warmup.
- `PhaseTimer`: per-phase times without a host sync inside a step (CUDA events, read after the
  step's one sync; plain clocks on CPU, where ops run synchronously).
- `check_room`: a pass never writes past the cache.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter

import torch

from .. import warmup
from .context import DecodeContext


def check_room(ctx: DecodeContext, cache_len: int, chunk: int):
    """A pass writes `chunk` scratch slots from `cache_len` on: refuse (never write past the cache)."""
    if cache_len + chunk > ctx.cache.slots:
        raise RuntimeError(
            f"KV cache too small: a {chunk}-token pass at length {cache_len} needs "
            f"{cache_len + chunk} slots, the cache has {ctx.cache.slots} (DecodeContext sizing bug)"
        )


class PhaseTimer:
    """Accumulates per-phase times into ctx.stats; `flush` after the step's host sync."""

    def __init__(self, ctx: DecodeContext):
        self.ctx = ctx
        self.cuda = ctx.device.type == "cuda"
        self.marks: list[tuple[str, object]] = []

    def _now(self):
        if self.cuda:
            e = torch.cuda.Event(enable_timing=True)
            e.record()
            return e
        return time.perf_counter()

    def start(self):
        self.marks = [("", self._now())]

    def mark(self, phase: str):
        """The phase that just ended."""
        self.marks.append((phase, self._now()))

    def flush(self):
        """Call only after a host sync that follows the last mark (CUDA events must be complete)."""
        for (_, a), (phase, b) in zip(self.marks, self.marks[1:]):
            s = a.elapsed_time(b) / 1000 if self.cuda else b - a
            self.ctx.stats.add_time(phase, s)
        self.marks = []


class StepRunner:
    """Runs `fn(*tensors) -> tuple of tensors`. With CUDA graphs on, the first call per key runs
    eagerly (it warms up cuBLAS / Triton and is a real step), the second captures the graph and
    every call replays it: arguments are copied into static buffers, the returned tensors are
    the graph's static outputs (valid until the next call with the same key)."""

    def __init__(self, ctx: DecodeContext):
        want = ctx.gen.cuda_graphs
        on_cuda = ctx.device.type == "cuda"
        if want and not on_cuda:
            raise ValueError("cuda_graphs=True needs the model on a CUDA device")
        self.enabled = on_cuda if want is None else bool(want)
        self.sampling = ctx.gen.temperature > 0
        self.generator = ctx.generator
        self.calls: Counter = Counter()
        self.graphs: dict = {}

    def __call__(self, key, fn, *args):
        if not self.enabled:
            return fn(*args)
        entry = self.graphs.get(key)
        if entry is None:
            self.calls[key] += 1
            warmup.bump()
            if self.calls[key] == 1:
                return fn(*args)
            entry = self._capture(fn, args)
            if entry is None:
                return fn(*args)
            self.graphs[key] = entry
        graph, static_in, static_out = entry
        for s, a in zip(static_in, args):
            if s is not None:
                s.copy_(a)
        graph.replay()
        # The next replay overwrites the static outputs: the caller gets its own.
        return tuple(None if t is None else t.clone() for t in static_out) if isinstance(static_out, tuple) \
            else static_out.clone()

    def _capture(self, fn, args):
        graph = torch.cuda.CUDAGraph()
        if self.sampling:
            register = getattr(graph, "register_generator_state", None)
            if register is None:  # older torch: a user generator cannot be captured
                self._give_up("this torch cannot capture a user RNG generator")
                return None
            register(self.generator)
        static_in = [None if a is None else a.clone() for a in args]
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph):
                static_out = fn(*static_in)
        except RuntimeError as e:
            self._give_up(str(e).splitlines()[0] if str(e) else type(e).__name__)
            return None
        return graph, static_in, static_out

    def _give_up(self, why: str):
        warnings.warn(f"CUDA graph capture of a decode step failed ({why}); running steps eagerly",
                      RuntimeWarning, stacklevel=3)
        self.enabled = False


