"""Where tuning results live: `<dir>/<device name>/<triton version>/<op>.json`, read and written.

The kernel autotuner (autotune.py) and auto's step-cost profile (decode/auto/profile.py) both keep their
results here. Directories, lowest priority first: the package's shipped data (`trikern/autotune/`),
the checkout's `autotune_cache/`, and the write directory (`write_dir()`: TRIKERN_AUTOTUNE_DIR, else
the checkout's `autotune_cache/` when writable, else the user cache dir). A file holds one op's
results for one device and triton version, `{"schema", "op", "gpu", "triton", "results": {key: result}}`;
a corrupt or foreign file is skipped with a warning, and every write replaces the file atomically.
See autotune_cache/README.md.
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import warnings
from pathlib import Path

from .. import files

SCHEMA = 1

_PACKAGE_DIR = Path(__file__).resolve().parent.parent  # trikern/
_CHECKOUT_ROOT = _PACKAGE_DIR.parent

_write_override: Path | None = None  # set for one explicit tuning run (`trikern tune --out`)


def sanitize(name: str) -> str:
    """A GPU name as a directory name: 'NVIDIA H100 80GB HBM3' -> 'NVIDIA_H100_80GB_HBM3'."""
    s = re.sub(r"[^A-Za-z0-9.+-]+", "_", name).strip("_")
    return s or "unknown"


def triton_version() -> str:
    import triton
    return triton.__version__


# ---------------------------------------------------------------- directories

def shipped_dirs() -> list[Path]:
    """Read-only result directories, lowest priority first: package data, then the checkout."""
    dirs = [_PACKAGE_DIR / "autotune"]
    if (_CHECKOUT_ROOT / "pyproject.toml").is_file():
        dirs.append(_CHECKOUT_ROOT / "autotune_cache")
    return dirs


def write_dir() -> Path:
    """Where results tuned on this machine go."""
    if _write_override is not None:
        return _write_override
    env = os.environ.get("TRIKERN_AUTOTUNE_DIR")
    if env:
        return Path(env)
    if (_CHECKOUT_ROOT / "pyproject.toml").is_file():
        d = _CHECKOUT_ROOT / "autotune_cache"
        if os.access(d if d.exists() else _CHECKOUT_ROOT, os.W_OK):
            return d
    import platformdirs
    return Path(platformdirs.user_cache_dir("trikern")) / "autotune"


@contextlib.contextmanager
def writing_to(directory: Path | None):
    """Inside this block write_dir() is `directory` (None: unchanged), whatever the environment says."""
    global _write_override
    old = _write_override
    _write_override = Path(directory) if directory is not None else old
    try:
        yield
    finally:
        _write_override = old


def read_dirs() -> list[Path]:
    dirs = shipped_dirs()
    w = write_dir()
    if all(w.resolve() != d.resolve() for d in dirs):
        dirs.append(w)
    return dirs


def result_path(directory: Path, gpu: str, op: str) -> Path:
    return Path(directory) / gpu / triton_version() / f"{op}.json"


# ---------------------------------------------------------------- files

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


def load_merged(gpu: str, op: str) -> dict[str, dict]:
    """The results of (gpu, op) from every read directory, later directories overriding earlier ones."""
    results: dict[str, dict] = {}
    for d in read_dirs():
        results.update(load_file(result_path(d, gpu, op), op))
    return results


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
    files.write_json(path, payload)
    return path
