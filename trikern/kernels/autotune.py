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
   (later ones override earlier ones);
3. a benchmark of every config: `triton.testing.do_bench` on CUDA (configs that fail to compile or
   launch are skipped), or under TRITON_INTERPRET=1 one timed run of each config, so interpreter
   tests execute every config. GPU results are persisted atomically; interpreter results only when
   a result directory is named explicitly (TRIKERN_AUTOTUNE_DIR or `trikern tune --out`, under the
   GPU name "interpreter"), never into the checkout.

`TRIKERN_AUTOTUNE=0` or `disable()` turns tuning off: `choose` returns `configs[0]`.
`prune` drops configs that cannot fit an architecture's shared memory; `tune_main` is `trikern tune`,
whose options reach `choose` through `tuning()` (no environment variables are changed).
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import importlib
import json
import os
import pkgutil
import re
import sys
import tempfile
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from .dispatch import interpreting

SCHEMA = 1
INTERPRETER_GPU = "interpreter"

# Largest shared memory one CTA may opt in to, bytes (CUDA programming guide, per compute capability).
SMEM_LIMIT = {
    80: 163 * 1024, 86: 99 * 1024, 87: 163 * 1024, 89: 99 * 1024,
    90: 227 * 1024, 100: 227 * 1024, 103: 227 * 1024, 120: 99 * 1024, 121: 99 * 1024,
}

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # trikern/
_CHECKOUT_ROOT = _PACKAGE_DIR.parent

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


def env_disabled() -> bool:
    return os.environ.get("TRIKERN_AUTOTUNE", "1").strip().lower() in ("0", "false", "no", "off")


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


def sanitize(name: str) -> str:
    """A GPU name as a directory name: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3'."""
    s = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")
    return s or "unknown"


def triton_version() -> str:
    import triton
    return triton.__version__


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


# ---------------------------------------------------------------- directories and files

def shipped_dirs() -> list[Path]:
    """Read-only result directories, lowest priority first: package data, then the checkout."""
    dirs = [_PACKAGE_DIR / "autotune"]
    if (_CHECKOUT_ROOT / "pyproject.toml").is_file():
        dirs.append(_CHECKOUT_ROOT / "autotune_cache")
    return dirs


def write_dir() -> Path:
    """Where results tuned on this machine go."""
    if _tuning is not None and _tuning.out is not None:
        return _tuning.out
    env = os.environ.get("TRIKERN_AUTOTUNE_DIR")
    if env:
        return Path(env)
    if (_CHECKOUT_ROOT / "pyproject.toml").is_file():
        d = _CHECKOUT_ROOT / "autotune_cache"
        if os.access(d if d.exists() else _CHECKOUT_ROOT, os.W_OK):
            return d
    import platformdirs
    return Path(platformdirs.user_cache_dir("trikern")) / "autotune"


def read_dirs() -> list[Path]:
    dirs = shipped_dirs()
    w = write_dir()
    if all(w.resolve() != d.resolve() for d in dirs):
        dirs.append(w)
    return dirs


def result_path(directory: Path, gpu: str, op: str) -> Path:
    return Path(directory) / gpu / triton_version() / f"{op}.json"


def _valid_config(c) -> bool:
    return isinstance(c, dict) and all(
        isinstance(k, str) and isinstance(v, (int, float, str, bool)) for k, v in c.items())


def load_file(path: Path, op: str) -> dict[str, dict]:
    """The results of one JSON file, or {} with a warning when it is corrupt or foreign."""
    path = Path(path)
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        warnings.warn(f"autotune: ignoring unreadable cache file {path}: {e}", stacklevel=3)
        return {}
    problem = None
    if not isinstance(data, dict) or data.get("schema") != SCHEMA:
        problem = f"not a schema-{SCHEMA} trikern autotune file"
    elif data.get("triton") != triton_version():
        problem = f"tuned with triton {data.get('triton')!r}, running {triton_version()}"
    elif data.get("op") != op:
        problem = f"holds op {data.get('op')!r}, expected {op!r}"
    elif not isinstance(data.get("results"), dict) or not all(
            isinstance(k, str) and _valid_config(v) for k, v in data["results"].items()):
        problem = "'results' is not a mapping of key strings to config objects"
    if problem:
        warnings.warn(f"autotune: ignoring cache file {path}: {problem}", stacklevel=3)
        return {}
    return dict(data["results"])


def save_result(directory: Path, gpu: str, op: str, key_str: str, config: dict) -> Path:
    """Add one result to `<directory>/<gpu>/<triton>/<op>.json`, written atomically."""
    return save_results(directory, gpu, op, {key_str: config})


def save_results(directory: Path, gpu: str, op: str, entries: dict, drop=()) -> Path:
    """Add `entries` (key -> result) to `<directory>/<gpu>/<triton>/<op>.json` and remove the `drop`
    keys, in one atomic replace: a reader sees the file before or after, never half of it."""
    path = result_path(directory, gpu, op)
    path.parent.mkdir(parents=True, exist_ok=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a corrupt file we are about to replace was already reported
        results = load_file(path, op)
    results.update(entries)
    for k in drop:
        results.pop(k, None)
    payload = {"schema": SCHEMA, "op": op, "gpu": gpu, "triton": triton_version(),
               "results": dict(sorted(results.items()))}
    fd, tmp = tempfile.mkstemp(prefix=f".{op}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(payload, f, indent=1)
            f.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def _table(op: str, gpu: str) -> dict[str, dict]:
    """Merged persisted results for (op, gpu), loaded once per process."""
    t = _tables.get((op, gpu))
    if t is None:
        t = {}
        for d in read_dirs():
            t.update(load_file(result_path(d, gpu, op), op))
        _tables[(op, gpu)] = t
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


def tune_main(argv: list[str] | None = None) -> int:
    """`trikern tune`: benchmark every op over its representative shapes and write the cache.

    Each kernel module may define `tune_shapes(device) -> list[(label, thunk)]`; a thunk allocates
    representative inputs and calls the op with backend="triton", which tunes through choose().
    The options reach choose() through `tuning()`; TRIKERN_AUTOTUNE=0 does not stop this command.
    """
    p = argparse.ArgumentParser(prog="trikern tune", description=tune_main.__doc__.splitlines()[0])
    p.add_argument("--ops", default=None, help="comma-separated op modules to tune (default: all)")
    p.add_argument("--out", type=Path, default=None, help="result directory (default: TRIKERN_AUTOTUNE_DIR, "
                   "the checkout's autotune_cache/, or the user cache dir); use trikern/autotune to ship results")
    p.add_argument("--keep", action="store_true", help="keep existing results, tune only missing keys")
    args = p.parse_args(argv)
    modules = modules_with("tune_shapes")
    ops, problem = select_ops(args.ops, modules)
    if problem:
        print(f"trikern tune: error: {problem}", file=sys.stderr)
        return 2
    if interpreting() or not torch.cuda.is_available():
        print("trikern tune: needs a CUDA GPU (and TRITON_INTERPRET unset); nothing tuned.", file=sys.stderr)
        return 2
    if env_disabled():
        print("trikern tune: ignoring TRIKERN_AUTOTUNE=0 for this run", file=sys.stderr)
    device = torch.device("cuda", torch.cuda.current_device())
    count = 0
    with tuning(out=args.out, force=not args.keep):
        for name in ops:
            for label, thunk in modules[name].tune_shapes(device):
                t0 = time.perf_counter()
                thunk()
                torch.cuda.synchronize()
                count += 1
                print(f"tuned {name:<12} {label:<40} {time.perf_counter() - t0:6.1f}s", flush=True)
        where = write_dir()
    print(f"trikern tune: {count} shapes on {gpu_name()} (sm_{arch_of()}), triton {triton_version()}; "
          f"results in {where}")
    return 0


if __name__ == "__main__":
    sys.exit(tune_main())
