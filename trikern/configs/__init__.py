"""The Nemotron-Labs-Diffusion config.json files, shipped with the package.

`nld-3b.json` is the 3B checkpoint's published config.json. `nld-8b.json` and `nld-14b.json` are
rebuilt from the published geometry in the same format (the 8B RoPE block is taken to equal the
3B's; the 14B `rope_theta` of 1e9 is unconfirmed). They let tests and benchmarks build
shape-faithful models (real key names, YaRN + llama-4 scaling) without downloading a checkpoint.

    names()                 -> ["nld-3b", "nld-8b", "nld-14b"]
    path("nld-8b")          -> the shipped file (trikern/configs/nld-8b.json)
    config_dict("nld-8b")   -> the raw JSON as a fresh dict (safe to modify)
    load_config("nld-8b")   -> ModelConfig; also a path to a config.json or a checkpoint folder
"""
from __future__ import annotations

import json
import os
import re
from pathlib import Path

from trikern.config import ModelConfig

_DIR = Path(__file__).resolve().parent  # package data: pyproject.toml ships configs/*.json
_SUFFIX = ".json"


def _natural(name: str) -> list:
    # "nld-8b" before "nld-14b": compare digit runs as numbers.
    return [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]


def names() -> list[str]:
    """The shipped config names, smallest model first."""
    return sorted((p.stem for p in _DIR.glob(f"*{_SUFFIX}")), key=_natural)


def path(name: str) -> Path:
    """The shipped config.json file for `name`."""
    known = names()
    if name not in known:
        raise ValueError(f"unknown config name {name!r}: shipped configs are {', '.join(known)} "
                         f"(or pass a path to a config.json or a checkpoint folder)")
    return _DIR / f"{name}{_SUFFIX}"


def config_dict(name: str) -> dict:
    """The shipped config `name` as the raw config.json dict; a new dict on every call."""
    return json.loads(path(name).read_text(encoding="utf-8"))


def load_config(name_or_path: str | os.PathLike) -> ModelConfig:
    """A ModelConfig from a shipped name ("nld-8b"), a config.json path or a checkpoint folder.

    A str equal to a shipped name always means the shipped config, whatever the current directory
    holds (write "./nld-8b" for a local folder of that name). A Path, or a str that names an
    existing file or folder, contains a "/" or ends in ".json", is read from disk by
    `ModelConfig.from_file`, whose errors name the file. Any other str is an unknown name.
    """
    if isinstance(name_or_path, str) and name_or_path in names():
        return ModelConfig.from_file(path(name_or_path))
    if isinstance(name_or_path, os.PathLike) or (isinstance(name_or_path, str) and _is_path(name_or_path)):
        return ModelConfig.from_file(name_or_path)
    if isinstance(name_or_path, str):
        path(name_or_path)  # not a shipped name: raises the unknown-name ValueError
    raise TypeError(f"name_or_path must be a config name or a path, got {type(name_or_path).__name__}")


def _is_path(s: str) -> bool:
    return os.path.exists(s) or "/" in s or os.sep in s or s.endswith(_SUFFIX)
