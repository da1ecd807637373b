"""`trikern selfcheck`: one command that proves a GPU the first time one appears (cli/selfcheck.py
parses its options; this package runs the checks).

Checks, by group (each named `<group>/<what>`; `--only` selects groups, names or name prefixes):

- `kernels/...`: every Triton op against its PyTorch reference at the shape's dimensions (kernels.py:
  one data-driven entry per check; all attention patterns, rope, rmsnorm, swiglu, verify, reveal,
  the tree ops, quant_linear, and fused_linear when it is present).
- `lossless/...`: greedy self-speculation equals AR token for token (decoding.py), on the embedded
  model in fp32 (its own backend: Triton on CUDA, the CPU backend on a CPU) and, with tiny shapes,
  on a tiny random model on the Triton backend (interpreted: the embedded model is too slow there).
- `graphs/step-runner`: CUDA graphs replay what eager runs (decode/runtime.py's StepRunner, and
  whole generations with graphs on and off). Skipped, with the reason, without CUDA.
- `graphs/batch`: batched decoding with CUDA graphs per batch bucket gives the eager batch's tokens
  (batch/graphs.py). Skipped, with the reason, without CUDA.
- `synthetic/<shape>`: the roofline table of bench/synthetic.py at the shape's caches and widths:
  ms per forward (a CUDA graph's replay on CUDA), GB/s, % of the measured read ceiling, kernels per
  forward and per layer (kernels/launches.py), and the path the autotuner chose for the ops that
  have torch's own path among their candidates.

Shapes: `nld-8b` (the default; NLD-8B's dimensions, bf16, caches 1K and 32K, T = 1, 8, 32, 72:
AR, verify of B = 8 and 32, a quadratic step of B = 8) and `tiny` (NLD-8B's config scaled down,
fp32, for the CPU dry run under TRITON_INTERPRET=1). The kernel, lossless and graphs checks run
with the autotuner off (each op's first config: one compile per kernel, no benchmarking); the
table tunes as a user's run does, unless `tune=False` (then its "path" is the first config's).

`run_checks` returns `Result`s; a check that raises is a FAIL naming the exception.
"""
from __future__ import annotations

import contextlib
import importlib.util
import sys
import time
import traceback
from dataclasses import dataclass, field

import torch

GROUPS = ("kernels", "lossless", "graphs", "synthetic")


@dataclass(frozen=True)
class Shapes:
    name: str
    overrides: dict  # on NLD-8B's config.json
    dtype: torch.dtype  # kernel checks and the table
    B: int  # block size of the kernel checks (verify T = B, quadratic T = B(B+1))
    cache: int  # committed cache length of the kernel checks
    caches: tuple  # the table's cache lengths
    widths: tuple  # the table's forward widths
    new_tokens: int  # per lossless / graphs generation
    prompts: int  # lossless prompts
    lossless_B: int  # their block size (and tree nodes)
    reps: int  # timed calls per table figure
    warmup: int  # untimed calls before them

    def raw(self) -> dict:
        from ..configs import config_dict  # noqa: PLC0415

        return {**config_dict("nld-8b"), **self.overrides}


SHAPES = {
    "nld-8b": Shapes("nld-8b", {}, torch.bfloat16, B=8, cache=1024, caches=(1024, 32768), widths=(1, 8, 32, 72),
                     new_tokens=32, prompts=2, lossless_B=8, reps=10, warmup=2),
    "tiny": Shapes("tiny", dict(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
                                num_key_value_heads=2, head_dim=16, vocab_size=160, max_position_embeddings=512,
                                mask_token_id=100),
                   # the interpreter's cost is per launch and per program: the fewest rows that still show AR,
                   # verify and quadratic steps (B = 2), and one prompt
                   torch.float32, B=3, cache=24, caches=(16, 48), widths=(1, 2, 6), new_tokens=6, prompts=1,
                   lossless_B=2, reps=1, warmup=0),
}


@dataclass
class Result:
    name: str
    status: str  # PASS | FAIL | SKIP
    seconds: float = 0.0
    detail: str = ""
    data: dict = field(default_factory=dict)

    def line(self) -> str:
        return f"{self.status}  {self.name:<40} {self.seconds:6.1f}s  {self.detail}"


@dataclass(frozen=True)
class Check:
    name: str
    run: object  # (Context) -> (ok, detail, data); raise Skip to skip


class Skip(Exception):
    """A check that cannot run here; the message says why."""


@dataclass
class Context:
    shapes: Shapes
    device: torch.device
    tune: bool
    log: object
    seed: int = 0


def checks(shapes: Shapes) -> list[Check]:
    """Every check of a run with `shapes`, in the order they run."""
    from . import kernels  # noqa: PLC0415

    out = [Check(f"kernels/{c.name}", _kernel_check(c)) for c in kernels.CASES]
    out.append(Check("lossless/embedded", _lossless_embedded))
    if shapes.name == "tiny":
        out.append(Check("lossless/triton-tiny", _lossless_tiny))
    out.append(Check("graphs/step-runner", _graphs))
    out.append(Check("graphs/batch", _graphs_batch))
    out.append(Check(f"synthetic/{shapes.name}", _synthetic))
    return out


def select(all_checks: list[Check], only: str | None) -> list[Check]:
    """The checks `only` names (comma-separated groups, names or name prefixes); ValueError naming
    an unknown one."""
    if only is None:
        return all_checks
    wanted = [s.strip().strip("/") for s in only.split(",") if s.strip()]
    if not wanted:
        raise ValueError(f"--only {only!r} selects no check")
    for w in wanted:
        if not any(c.name == w or c.name.startswith(w + "/") for c in all_checks):
            raise ValueError(f"--only: {w!r} matches no check (groups: {', '.join(GROUPS)}; `--list` names them all)")
    return [c for c in all_checks if any(c.name == w or c.name.startswith(w + "/") for w in wanted)]


@contextlib.contextmanager
def _tuner(on: bool):
    """Kernel tuning on or off for the block, then back to the process's own switch (`disable()`'s
    flag, which autotune exposes no getter for; TRIKERN_AUTOTUNE=0 still wins inside)."""
    from ..kernels import autotune  # noqa: PLC0415

    was = autotune._disabled
    (autotune.enable if on else autotune.disable)()
    try:
        yield
    finally:
        (autotune.disable if was else autotune.enable)()


def run_checks(shapes: Shapes, device: torch.device, only: str | None = None, tune: bool = True,
               log=None) -> list[Result]:
    """Run the selected checks, printing each result line to `log` (default stderr) as it ends."""
    log = log or sys.stderr
    ctx = Context(shapes, device, tune, log)
    results = []
    for c in select(checks(shapes), only):
        t0 = time.perf_counter()
        try:
            ok, detail, data = c.run(ctx)
            if device.type == "cuda":  # an asynchronous fault belongs to the check that launched it
                torch.cuda.synchronize(device)
            r = Result(c.name, "PASS" if ok else "FAIL", detail=detail, data=data)
        except Skip as e:
            r = Result(c.name, "SKIP", detail=str(e))
        except Exception as e:  # noqa: BLE001 - a check that raises is a failed check, not a crashed run
            traceback.print_exc(file=log)
            first = str(e).splitlines()[0] if str(e) else ""
            r = Result(c.name, "FAIL", detail=f"{type(e).__name__}: {first}"[:300])
        if device.type == "cuda":
            with contextlib.suppress(RuntimeError):  # after a device fault every call raises: the next checks say so
                torch.cuda.empty_cache()
        r.seconds = time.perf_counter() - t0
        results.append(r)
        print(r.line(), file=log, flush=True)
    return results


def summary(results: list[Result], shapes: Shapes, device: torch.device, wall_s: float) -> str:
    from ..kernels.dispatch import interpreting  # noqa: PLC0415

    n = {s: sum(r.status == s for r in results) for s in ("PASS", "FAIL", "SKIP")}
    how = f"{shapes.name} shapes on {device}" + (", Triton interpreted" if interpreting() else "")
    verdict = "FAILED" if n["FAIL"] else "ok"
    failed = [r.name for r in results if r.status == "FAIL"]
    return (f"selfcheck {verdict}: {n['PASS']} passed, {n['FAIL']} failed, {n['SKIP']} skipped in {wall_s:.1f}s "
            f"({how})" + (f"\nfailed: {', '.join(failed)}" if failed else ""))


# -- the checks ------------------------------------------------------------------------------------------
def _kernel_check(case):
    def run(ctx: Context):
        from . import kernels  # noqa: PLC0415

        if case.module and importlib.util.find_spec(f"trikern.kernels.{case.module}") is None:
            raise Skip(f"trikern.kernels.{case.module} is not in this build")
        s = ctx.shapes
        k = kernels.Inputs(ctx.device, s.dtype, s.raw(), s.B, s.cache, max(s.caches), ctx.seed)
        with _tuner(False), torch.inference_mode():
            got, want = case.fn(k)
        ok, detail = kernels.compare(got, want, s.dtype, case.exact)
        return ok, detail, {}
    return run


def _embedded(ctx: Context, dtype, backend="auto"):
    from .. import load  # noqa: PLC0415

    return load(device=str(ctx.device), dtype=dtype, backend=backend)


def _prompts(m, count: int) -> list:
    from ..bench.prompts import load_prompts  # noqa: PLC0415

    return [p.token_ids(m) for p in load_prompts(limit=count)]


def _lossless_embedded(ctx: Context):
    from . import decoding  # noqa: PLC0415

    with _tuner(False):
        m = _embedded(ctx, torch.float32)
        ok, detail, data = decoding.lossless(m, _prompts(m, ctx.shapes.prompts), ctx.shapes.new_tokens,
                                             ctx.shapes.lossless_B)
    return ok, f"embedded model, fp32, backend {m.model.backend} on {ctx.device}: {detail}", data


def _lossless_tiny(ctx: Context):
    from ..api import Model  # noqa: PLC0415
    from . import decoding  # noqa: PLC0415

    s = ctx.shapes
    with _tuner(False):
        # one layer: what is checked is the decode loop over Triton ops, at half the interpreter's cost
        raw = {**s.raw(), "num_hidden_layers": 1}
        m = Model(decoding.random_tiny_model(raw, ctx.device, torch.float32, "triton", ctx.seed), None)
        g = torch.Generator().manual_seed(ctx.seed)
        prompts = [torch.randint(0, m.cfg.vocab_size, (n,), generator=g).tolist() for n in (3, 7)][:s.prompts]
        ok, detail, data = decoding.lossless(m, prompts, s.new_tokens, s.lossless_B)
    return ok, f"tiny random model (1 layer), fp32, backend triton: {detail}", data


def _graphs(ctx: Context):
    from . import decoding  # noqa: PLC0415

    if ctx.device.type != "cuda":
        raise Skip(f"CUDA graphs need a CUDA device (running on {ctx.device})")
    with _tuner(False):
        m = _embedded(ctx, torch.bfloat16)
        return decoding.graphs(m, _prompts(m, 1)[0], ctx.shapes.new_tokens, min(ctx.shapes.lossless_B, 4))


def _graphs_batch(ctx: Context):
    from . import decoding  # noqa: PLC0415

    if ctx.device.type != "cuda":
        raise Skip(f"CUDA graphs need a CUDA device (running on {ctx.device})")
    with _tuner(False):
        m = _embedded(ctx, torch.float32)
        return decoding.batch_graphs(m, _prompts(m, 3), ctx.shapes.new_tokens, min(ctx.shapes.lossless_B, 4))


def _synthetic(ctx: Context):
    from . import table  # noqa: PLC0415

    with _tuner(ctx.tune and ctx.device.type == "cuda"):
        return table.run(ctx)
