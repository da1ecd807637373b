"""Host-side pieces the decode driver (driver.py) and the strategies share.

The device work of a step is a function of tensors with no host synchronisation (each strategy's
passes). What happens between steps lives here:

- `Emitter`: turns the tokens a step produced into what is yielded -- thinking budget (force the
  end-think token), first EOS, token budget -- and keeps the generated-token count and decode time.
  When it forces a token the device state no longer matches the output; the driver repairs it
  (truncate the cache, restart from the forced token), which only happens between steps.
- `StepRunner`: runs a step's passes eagerly, or on CUDA as CUDA graphs captured per (pass, shape) key.
- `PhaseTimer`: per-phase times without a host sync inside a step (CUDA events, read after the
  step's one sync; plain clocks on CPU, where ops run synchronously).
- small device helpers shared by the steps: excluding the mask id, random draws, a step's chain.
"""
from __future__ import annotations

import time
import warnings
from collections import Counter

import torch

from ..sampling import draw, probs
from .common import DecodeContext, finish


class Emitter:
    """Output bookkeeping of one generation; `take` is called once per step with its tokens."""

    def __init__(self, ctx: DecodeContext):
        self.ctx = ctx
        self.emitted = 0
        self.thinking = ctx.gen.thinking_budget is not None
        self.t0 = ctx.sync_time()

    def take(self, tokens: list[int]) -> tuple[list[int], bool, bool]:
        """(tokens to yield, done, forced): `forced` means the last yielded token is the end-think
        token put in place of what the step produced (and decoding goes on)."""
        g, forced = self.ctx.gen, False
        if self.thinking:
            for i, t in enumerate(tokens):
                if self.emitted + i >= g.thinking_budget:  # the budget counts emitted tokens, in every mode
                    forced = t != g.end_think_id
                    tokens = tokens[:i] + [g.end_think_id]
                    self.thinking = False
                    break
                if t == g.end_think_id:
                    self.thinking = False
                    break
        out, done = finish(tokens, self.ctx, self.emitted)
        self.emitted += len(out)
        st = self.ctx.stats
        st.generated_tokens = self.emitted
        st.decode_s = self.ctx.sync_time() - self.t0
        return out, done, forced and not done

    @property
    def room(self) -> int:
        """Tokens the generation may still emit."""
        return self.ctx.max_new_tokens - self.emitted

    def ends(self, tokens: list[int]) -> bool:
        """Whether taking `tokens` would end the generation (first EOS or the token budget)."""
        return finish(tokens, self.ctx, self.emitted)[1]

    def cache_length(self) -> int:
        """What the cache length is between steps: every emitted token but the newest (the seed,
        whose K/V the next step writes) is in the cache after the prompt."""
        return self.ctx.stats.prompt_tokens + self.emitted - 1


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
        self.cold = False  # set when a call ran eagerly to warm up or captured (the driver's timing)

    def __call__(self, key, fn, *args):
        if not self.enabled:
            return fn(*args)
        entry = self.graphs.get(key)
        if entry is None:
            self.calls[key] += 1
            self.cold = True
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
        return static_out

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


# -- device helpers (no host sync) -------------------------------------------------------------
def require_mask_id(ctx: DecodeContext, mode: str) -> tuple[int, torch.Tensor]:
    """(mask id, the same as a [1] int64 device tensor)."""
    m = ctx.cfg.mask_token_id
    if m is None:
        raise ValueError(f"mode={mode!r} needs a mask token: {ctx.cfg.model_type} config has no mask_token_id")
    return int(m), torch.tensor([int(m)], device=ctx.device)


def without_mask(logits: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
    """Logits with the mask id's column (mask_index: [1] int64 on the device, made before any
    capture) at -inf: never drafted, revealed or emitted by diffusion."""
    return logits.index_fill(-1, mask_index, float("-inf"))


def choose(ctx: DecodeContext, logits: torch.Tensor):
    """Draft tokens [N] for logits [N, V] and the distribution they were drawn from (None when
    greedy): what the sampled verify rule needs as q."""
    g = ctx.gen
    if g.temperature <= 0:
        return torch.argmax(logits, dim=-1), None
    q = probs(logits, g.temperature, g.top_k, g.top_p)
    return draw(q, ctx.generator), q


def verifier_inputs(ctx: DecodeContext, logits: torch.Tensor, drafts: int):
    """(target, uniforms, noise) for kernels.verify: logits when greedy, else p plus the coins."""
    g = ctx.gen
    if g.temperature <= 0:
        return logits, None, None
    p = probs(logits, g.temperature, g.top_k, g.top_p)
    u = torch.rand(drafts, device=logits.device, generator=ctx.generator)
    e = torch.empty(p.shape[-1], device=logits.device).exponential_(1.0, generator=ctx.generator)
    return p, u, e


def produced(tokens_list: list[int]) -> list[int]:
    """The emitted prefix of a verify op's padded token list (padding is -1)."""
    return [t for t in tokens_list if t >= 0]
