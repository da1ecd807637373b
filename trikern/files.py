"""Atomic file writes: a reader (or a crash) sees the old file or the new one, never half of one.

Every file trikern writes for later (autotune results, the decode profile, checkpoints, benchmark
reports) goes through `atomic_path`: write a temporary file in the same folder (same file system,
so the final `os.replace` is atomic), then rename it over the target; on any error the temporary
file is removed and the target is left as it was.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary path beside `path` (its folder is created); on success it replaces `path`."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def write_bytes(path, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


def write_text(path, text: str) -> Path:
    return write_bytes(path, text.encode("utf-8"))


def write_json(path, obj, **dumps) -> Path:
    """`obj` as JSON plus a newline; `dumps` are json.dumps options (indent defaults to 1)."""
    dumps.setdefault("indent", 1)
    return write_text(path, json.dumps(obj, **dumps) + "\n")
