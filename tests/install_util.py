"""A non-editable install of a copy of the package, for tests of what a wheel ships (package data)."""
from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def package_copy(tmp_path: Path, *ignore: str) -> Path:
    """pyproject.toml, README.md and trikern/ (minus `ignore` patterns) copied to tmp_path/src."""
    src = tmp_path / "src"
    src.mkdir()
    shutil.copy(ROOT / "pyproject.toml", src)
    shutil.copy(ROOT / "README.md", src)
    shutil.copytree(ROOT / "trikern", src / "trikern", ignore=shutil.ignore_patterns("__pycache__", *ignore))
    return src


def install(src: Path, tmp_path: Path) -> Path:
    """pip install (no deps, no index) into tmp_path/site; returns that directory for PYTHONPATH."""
    site = tmp_path / "site"
    subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation",
                    "--no-index", "--target", str(site), str(src)], check=True, capture_output=True)
    return site
