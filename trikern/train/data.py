"""Training data: Python source files (by default the standard library of the running interpreter).

Files are split into train / held-out by a hash of their path relative to the data root, so the
split is deterministic, independent of file order, and never puts part of a file on both sides.
Token streams are files joined by `<|endoftext|>`; training windows are drawn at random offsets
from a generator seeded by (seed, step), so a resumed run sees exactly the batches it would have.
"""
from __future__ import annotations

import hashlib
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch

SKIP_DIRS = {"site-packages", "dist-packages", "__pycache__"}


class DataError(ValueError):
    """A data path that cannot be used; the message names it."""


def default_root() -> Path:
    return Path(sysconfig.get_paths()["stdlib"])


def is_heldout(rel: str, heldout_percent: float) -> bool:
    h = int(hashlib.sha1(rel.encode()).hexdigest()[:8], 16)
    return h % 10000 < heldout_percent * 100


def heldout_order(rel: str) -> str:
    """Fixed order of held-out files for evaluation prompts (by hash, not by name)."""
    return hashlib.sha1(("order:" + rel).encode()).hexdigest()


@dataclass
class SourceFile:
    rel: str
    text: str


def list_files(root: str | Path) -> list[Path]:
    root = Path(root)
    if not root.exists():
        raise DataError(f"data path {root} does not exist")
    if root.is_file():
        raise DataError(f"data path {root} is a file; expected a folder of .py files")
    files = sorted(p for p in root.rglob("*.py") if not (SKIP_DIRS & set(p.relative_to(root).parts)))
    if not files:
        raise DataError(f"data path {root} contains no .py files")
    return files


def read_split(root: str | Path | None = None, heldout_percent: float = 3.0) -> tuple[list[SourceFile], list[SourceFile]]:
    """(train, heldout) source files under `root` (default: the stdlib). Undecodable files are
    skipped (a few stdlib test files are deliberately not UTF-8)."""
    root = Path(root) if root is not None else default_root()
    train, held = [], []
    for p in list_files(root):
        try:
            text = p.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        rel = p.relative_to(root).as_posix()
        (held if is_heldout(rel, heldout_percent) else train).append(SourceFile(rel, text))
    if not train or not held:
        raise DataError(f"data path {root}: the split left {len(train)} training and {len(held)} held-out "
                        f"files; need at least one of each (heldout_percent={heldout_percent})")
    return train, held


def encode_stream(tok, files: list[SourceFile], sep_id: int) -> torch.Tensor:
    """All files encoded and joined, each followed by `sep_id` (int32 [T])."""
    enc = tok.encode_batch([f.text for f in files], add_special_tokens=False)
    ids = []
    for e in enc:
        ids.extend(e.ids)
        ids.append(sep_id)
    return torch.tensor(ids, dtype=torch.int32)


def sample_windows(stream: torch.Tensor, batch: int, length: int, seed: int, step: int) -> torch.Tensor:
    """`batch` random windows of `length` tokens (int64 [batch, length]), a pure function of (seed, step)."""
    if stream.numel() <= length:
        raise DataError(f"token stream has {stream.numel()} tokens; need more than the window length {length}")
    g = torch.Generator().manual_seed(seed * 1_000_003 + step)
    starts = torch.randint(0, stream.numel() - length, (batch,), generator=g)
    return torch.stack([stream[s:s + length] for s in starts.tolist()]).long()
