"""Per-GPU autotuning of Triton launch configs, persisted as JSON.

The protocol, the same in every launcher:

    if config is None:
        config = autotune.choose(op, key, configs, run)
    run(config)

`choose` only answers which config to use; the launcher then always launches with it. `run(config)`
launches the op once with that config and may be called any number of times while benchmarking, so
it must leave no state behind: it writes only buffers that the final `run(config)` overwrites
(outputs, scratch), never its inputs. An op that updates state in place (verify's cache compaction
and length update) keeps that part outside `run`. The key is a tuple of already-bucketed shape
facts (use `bucket(n)` for lengths that grow, so a growing cache or a longer prompt does not re-tune
in the middle of a chat). The answer comes from, in order:

1. an in-process memo;
2. persisted results `<dir>/<gpu name>/<triton version>/<op>.json`, read from the package's shipped
   data (`trikern/autotune/`), the checkout's `autotune_cache/`, and the user's write directory
   (later ones override earlier ones): the result store, autotune_store.py;
3. a benchmark of every config: `triton.testing.do_bench` on CUDA (configs that fail to compile or
   launch are skipped), or under TRITON_INTERPRET=1 one timed run of each config, so interpreter
   tests execute every config. GPU results are persisted atomically; interpreter results only when
   a result directory is named explicitly (TRIKERN_AUTOTUNE_DIR or `trikern tune --out`, under the
   GPU name "interpreter"), never into the checkout.

`TRIKERN_AUTOTUNE=0` or `disable()` turns tuning off: `choose` returns `configs[0]` (auto's step-cost
profile has its own switch, TRIKERN_DECODE_PROFILE). `prune` drops configs that cannot fit an
architecture's shared memory; `tune_ops` is the work of `trikern tune` (trikern/cli/tune.py), whose
options reach `choose` through `tuning()` (no environment variables are changed).

The store's names (`write_dir`, `read_dirs`, `result_path`, `load_file`, `save_result(s)`, ...) are
re-exported here, so `autotune.write_dir()` keeps working; to patch them, patch autotune_store.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import os
import pkgutil
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .. import warmup
from . import autotune_store as store
from .autotune_store import (SCHEMA, load_file, load_merged, read_dirs, result_path, sanitize, save_result,
                             save_results, shipped_dirs, triton_version, write_dir)
from .dispatch import interpreting

__all__ = [  # the tuner, then the result store's names it re-exports
    "FLOAT_DTYPES", "INTERPRETER_GPU", "SMEM_LIMIT", "arch_of", "bucket", "choose", "clear_memo", "disable",
    "dtype_key", "enable", "enabled", "env_disabled", "gpu_name", "kernel_modules", "modules_with", "prune",
    "select_ops", "smem_limit", "switched_off", "tune_ops", "tuning",
    "SCHEMA", "load_file", "load_merged", "read_dirs", "result_path", "sanitize", "save_result", "save_results",
    "shipped_dirs", "triton_version", "write_dir",
]

INTERPRETER_GPU = "interpreter"

# Largest shared memory one CTA may opt in to, bytes (CUDA programming guide, per compute capability).
SMEM_LIMIT = {
    80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024,
    90: 227 * 1024, 100: 227 * 1024, 103: 227 * 1024, 120: 99 * 1024, 121: 99 * 1024,
}

_lock = threading.RLock()
_memo: dict[tuple[str, str, str], dict] = {}  # (op, gpu name, str(key)) -> config
_fast: dict[tuple, dict] = {}  # (op, key, device index) -> config: the lookup every launch makes
_tables: dict[tuple[str, str], dict[str, dict]] = {}
_disabled = False


@dataclass(frozen=True)
class _Tuning:
    """An explicit tuning run (`trikern tune`): its options override the environment's."""
    out: Path | None  # result directory, else the usual write_dir()
    force: bool  # ignore persisted results and benchmark again


_tuning: _Tuning | None = None


# ---------------------------------------------------------------- switches and small helpers

def disable() -> None:
    """Stop tuning in this process: choose() returns configs[0]."""
    global _disabled
    _disabled = True


def enable() -> None:
    global _disabled
    _disabled = False


def enabled() -> bool:
    """Whether choose() tunes: always inside tuning(), else unless disable() or TRIKERN_AUTOTUNE=0."""
    if _tuning is not None:
        return True
    return not _disabled and not env_disabled()


def switched_off(variable: str) -> bool:
    """Whether an on-by-default switch in the environment says off (0, false, no, off)."""
    return os.environ.get(variable, "1").strip().lower() in ("0", "false", "no", "off")


def env_disabled() -> bool:
    return switched_off("TRIKERN_AUTOTUNE")


@contextlib.contextmanager
def tuning(out: Path | None = None, force: bool = True):
    """Tune for this block whatever TRIKERN_AUTOTUNE says: results go to `out` (default: write_dir()),
    and with `force` persisted results are ignored and every key is benchmarked again."""
    global _tuning
    with _lock:
        if _tuning is not None:
            raise RuntimeError("autotune.tuning() does not nest")
        clear_memo()
        _tuning = _Tuning(Path(out) if out is not None else None, bool(force))
    try:
        with store.writing_to(_tuning.out):
            yield
    finally:
        with _lock:
            _tuning = None
            clear_memo()  # choices made under `force` must not outlive it


def clear_memo() -> None:
    """Forget in-process choices and loaded files (the next choose re-reads the directories)."""
    with _lock:
        _memo.clear()
        _fast.clear()
        _tables.clear()


def bucket(n: int, floor: int = 16) -> int:
    """Next power of two >= max(n, floor): the key of a length that grows."""
    n = max(int(n), int(floor), 1)
    return 1 << (n - 1).bit_length()


def gpu_name(device=None) -> str:
    """Directory name of the device the kernels run on ('interpreter' under TRITON_INTERPRET)."""
    if _interp_or_cpu():
        return INTERPRETER_GPU
    index = torch.cuda.current_device() if device is None else torch.device("cuda", device).index
    return _cuda_name(index)


def _interp_or_cpu() -> bool:
    return interpreting() or not torch.cuda.is_available()


@functools.lru_cache(maxsize=None)
def _cuda_name(index: int) -> str:
    return sanitize(torch.cuda.get_device_name(index))


def arch_of(device=None) -> int:
    """Compute capability as an int: 80 (A100), 90 (H100/H200), 121 (GB10), ..."""
    major, minor = torch.cuda.get_device_capability(device)
    return major * 10 + minor


def smem_limit(arch: int) -> int:
    if arch in SMEM_LIMIT:
        return SMEM_LIMIT[arch]
    lower = [a for a in SMEM_LIMIT if a <= arch]
    if not lower:
        raise ValueError(f"arch={arch}: no shared-memory limit known below sm_{min(SMEM_LIMIT)}")
    return SMEM_LIMIT[max(lower)]


def prune(configs: list[dict], arch: int, smem_estimate: Callable[[dict], int]) -> list[dict]:
    """The configs whose estimated shared memory fits `arch`; raises if none does."""
    limit = smem_limit(arch)
    kept = [c for c in configs if smem_estimate(c) <= limit]
    if not kept:
        raise ValueError(f"autotune.prune: no config fits sm_{arch}'s {limit} bytes of shared memory")
    return kept


FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def dtype_key(t: torch.Tensor) -> str:
    """A tensor's dtype as a key part: 'float16', 'bfloat16', ..."""
    return str(t.dtype).removeprefix("torch.")


def _key_str(op: str, key: tuple) -> str:
    if not isinstance(key, tuple):
        raise TypeError(f"autotune.choose({op!r}): key must be a tuple, got {type(key).__name__}")
    for part in key:
        if not isinstance(part, (str, int, bool, float, type(None))):
            raise TypeError(f"autotune.choose({op!r}): key part {part!r} is not a str/int/bool/float/None "
                            "(bucket shapes and pass plain values, not tensors or dtypes)")
    return str(key)


# ---------------------------------------------------------------- persisted results

def _table(op: str, gpu: str) -> dict[str, dict]:
    """Merged persisted results for (op, gpu), loaded once per process."""
    t = _tables.get((op, gpu))
    if t is None:
        t = _tables[(op, gpu)] = load_merged(gpu, op)
    return t


# ---------------------------------------------------------------- benchmarking

def _compile_errors() -> tuple[type[BaseException], ...]:
    errs: list[type[BaseException]] = [RuntimeError, ValueError]
    with contextlib.suppress(ImportError):
        from triton.runtime.errors import OutOfResources, PTXASError
        errs += [OutOfResources, PTXASError]
    with contextlib.suppress(ImportError):
        from triton.compiler.errors import CompilationError
        errs.append(CompilationError)
    return tuple(errs)


def _bench_cuda(op: str, configs: list[dict], run: Callable[[dict], object]) -> dict:
    warmup.bump()  # a decode step that tuned a kernel is not a steady-state step
    import triton.testing

    errs = _compile_errors()
    best, best_ms, failures = None, float("inf"), []
    for cfg in configs:
        try:
            ms = triton.testing.do_bench(lambda: run(cfg), warmup=10, rep=40, return_mode="median")
        except errs as e:  # too much shared memory, too many registers, ...: not a candidate here
            failures.append(f"{cfg}: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}")
            continue
        if ms < best_ms:
            best, best_ms = cfg, ms
    if best is None:
        raise RuntimeError(f"autotune: every config of {op} failed on this GPU:\n  " + "\n  ".join(failures))
    return best


def _bench_cpu(configs: list[dict], run: Callable[[dict], object]) -> dict:
    warmup.bump()  # a decode step that tuned a kernel is not a steady-state step
    best, best_s = None, float("inf")
    for cfg in configs:  # every config runs, so interpreter tests exercise the whole space
        t0 = time.perf_counter()
        run(cfg)
        dt = time.perf_counter() - t0
        if dt < best_s:
            best, best_s = cfg, dt
    return best


def _capturing() -> bool:
    return torch.cuda.is_available() and torch.cuda.is_current_stream_capturing()


# ---------------------------------------------------------------- the entry point

def choose(op: str, key: tuple, configs: list[dict], run: Callable[[dict], object]) -> dict:
    """The config to launch `op` with for shape bucket `key` (see the module docstring).

    `run(config)` is only used to benchmark: it launches the op once with that config and may run
    many times, so it must not change any state the caller keeps (see the module docstring). The
    caller launches with the returned config itself, whether or not choose benchmarked.
    """
    if not configs:
        raise ValueError(f"autotune.choose({op!r}): empty config list")
    if not enabled() or len(configs) == 1:
        return configs[0]
    device = -1 if _interp_or_cpu() else torch.cuda.current_device()
    try:
        hit = _fast.get((op, key, device))  # the per-launch path: one dict lookup
    except TypeError:  # unhashable key: _key_str below says what is wrong
        hit = None
    if hit is not None:
        return hit
    ks = _key_str(op, key)
    gpu = gpu_name()
    memo_key = (op, gpu, ks)
    with _lock:
        hit = _memo.get(memo_key)
        if hit is not None:
            return hit
        if _tuning is None or not _tuning.force:
            stored = _table(op, gpu).get(ks)
            if stored is not None and stored in configs:  # a stale entry from another config space re-tunes
                _memo[memo_key] = _fast[(op, key, device)] = stored
                return stored
        if _capturing():  # no benchmarking inside a CUDA graph capture
            return configs[0]
        if gpu == INTERPRETER_GPU:
            best = _bench_cpu(configs, run)
            persist = "TRIKERN_AUTOTUNE_DIR" in os.environ or (_tuning is not None and _tuning.out is not None)
        else:
            best = _bench_cuda(op, configs, run)
            persist = True
        _memo[memo_key] = _fast[(op, key, device)] = best
        _table(op, gpu)[ks] = best
        if persist:
            try:
                save_result(write_dir(), gpu, op, ks, best)
            except OSError as e:
                warnings.warn(f"autotune: could not save {op} result under {write_dir()}: {e}", stacklevel=2)
        return best


# ---------------------------------------------------------------- trikern tune

def kernel_modules() -> Iterable[object]:
    """Every module of trikern.kernels, imported."""
    pkg = importlib.import_module(__package__)
    for info in pkgutil.iter_modules(pkg.__path__):
        yield importlib.import_module(f"{__package__}.{info.name}")


def modules_with(attr: str) -> dict[str, object]:
    """The kernel modules that define `attr` (tune_shapes, aot_variants), by short name."""
    return {m.__name__.rsplit(".", 1)[-1]: m for m in kernel_modules() if hasattr(m, attr)}


def select_ops(text: str | None, known: Iterable[str]) -> tuple[list[str], str]:
    """(names, problem) for an --ops value: all known ops when `text` is None; otherwise the listed
    names, or a one-line problem (unknown names against the known ones, or an empty list)."""
    known = sorted(known)
    if text is None:
        return known, ""
    names = [s.strip() for s in text.split(",") if s.strip()]
    unknown = [n for n in names if n not in known]
    if unknown:
        return [], f"--ops: unknown op{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}; known: {', '.join(known)}"
    if not names:
        return [], f"--ops {text!r} selects no op; known: {', '.join(known)}"
    return list(dict.fromkeys(names)), ""


def tune_ops(modules: dict[str, object], ops: list[str], out: Path | None = None, force: bool = True,
             log: Callable[[str], object] = print) -> tuple[int, Path]:
    """Benchmark every op in `ops` over its representative shapes on the current CUDA device and
    persist the results: (shapes tuned, the directory they went to).

    Each kernel module may define `tune_shapes(device) -> list[(label, thunk)]`; a thunk allocates
    representative inputs and calls the op with backend="triton", which tunes through choose().
    Runs inside `tuning(out, force)`, so TRIKERN_AUTOTUNE=0 does not stop it.
    """
    device = torch.device("cuda", torch.cuda.current_device())
    count = 0
    with tuning(out=out, force=force):
        for name in ops:
            for label, thunk in modules[name].tune_shapes(device):
                t0 = time.perf_counter()
                thunk()
                torch.cuda.synchronize()
                count += 1
                log(f"tuned {name:<12} {label:<40} {time.perf_counter() - t0:6.1f}s")
        where = write_dir()
    return count, where
