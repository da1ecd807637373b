"""Hugging Face hub ids as checkpoints: `trikern.load("org/name")` and `--model org/name`.

A hub id is downloaded with huggingface_hub's `snapshot_download` into the standard HF cache (the one
transformers, vLLM and the `hf` command share), and the snapshot folder is loaded like any other
checkpoint folder. Offline (`HF_HUB_OFFLINE=1`, or the hub unreachable) the cached snapshot is used.
A local path that exists always wins over a hub id.
"""
from __future__ import annotations

import os
import re
from pathlib import Path

from . import __version__

# What trikern reads from a checkpoint: config / index / tokenizer / adapter JSON, safetensors weights
# (model and LoRA), chat templates. Repos often also carry .bin / .pth / .gguf copies of the same
# weights, and Mistral's consolidated*.safetensors and Meta's original/ folder: each as large as
# the model, and never read.
ALLOW_PATTERNS = ["*.json", "*.safetensors", "*.jinja"]
IGNORE_PATTERNS = ["original/*", "*/original/*", "consolidated*.safetensors", "*/consolidated*.safetensors"]

# The hub's repo-name rules (huggingface_hub validate_repo_id): word characters, '-' and '.',
# at most 96 per part, no '--' or '..', no leading or trailing '-' / '.'.
_PART = r"(?!.*(?:--|\.\.))[A-Za-z0-9_](?:[\w.-]{0,94}[A-Za-z0-9_])?"
_HUB_ID = re.compile(rf"{_PART}/{_PART}", re.ASCII)
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_id(path) -> bool:
    """`org/name`: a str (an os.PathLike is always a path), one slash, valid repo-name characters."""
    return isinstance(path, str) and _HUB_ID.fullmatch(path) is not None


def cache_dir() -> Path:
    """The hub cache, read from the environment now: huggingface_hub reads it once at import, so a
    caller (or a test) that sets HF_HUB_CACHE / HF_HOME after that import would otherwise be ignored."""
    env = os.environ.get
    home = env("HF_HOME") or os.path.join(env("XDG_CACHE_HOME") or os.path.join("~", ".cache"), "huggingface")
    hub = env("HF_HUB_CACHE") or env("HUGGINGFACE_HUB_CACHE") or os.path.join(home, "hub")
    return Path(os.path.expandvars(os.path.expanduser(hub)))


def offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE), read now for the same reason as `cache_dir`."""
    return any((os.environ.get(k) or "").upper() in _TRUE for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def resolve(path, revision=None) -> Path:
    """The folder to load for `path`: an existing local path as is; a hub id's snapshot folder
    (downloaded, or from the cache offline); anything else as is, for the caller's "does not exist"."""
    if revision is not None and (not isinstance(revision, str) or not revision.strip()):
        raise ValueError(f"revision={revision!r}: expected a branch, tag or commit hash of a hub repo (str)")
    local = Path(path)
    if local.exists():
        if revision is not None:
            raise ValueError(f"revision={revision!r} applies to Hugging Face hub ids, but {path} is a local path")
        return local
    if not is_hub_id(path):
        return local
    return snapshot(path, revision)


def snapshot(repo_id: str, revision: str | None = None) -> Path:
    """The local snapshot folder of hub repo `repo_id` at `revision` (default: main). Every failure is
    one FileNotFoundError naming the repo and revision (the CLI prints it as one line), never
    huggingface_hub's own exceptions."""
    try:
        from huggingface_hub import snapshot_download  # noqa: PLC0415 - only hub ids need it
        from huggingface_hub.utils import (  # noqa: PLC0415
            GatedRepoError,
            RepositoryNotFoundError,
            RevisionNotFoundError,
        )
    except ImportError:
        raise FileNotFoundError(f"{repo_id} is not a local folder, and loading it as a Hugging Face hub id needs "
                                f"huggingface_hub: pip install 'huggingface_hub>=0.23'") from None

    rev = revision or "main"
    cache = cache_dir()
    what = f"hub repo {repo_id!r} (revision {rev!r})"
    kw = dict(repo_id=repo_id, revision=revision, cache_dir=cache, allow_patterns=ALLOW_PATTERNS,
              ignore_patterns=IGNORE_PATTERNS, library_name="trikern", library_version=__version__)
    why, fix = "HF_HUB_OFFLINE is set", "once without HF_HUB_OFFLINE"
    if not offline():
        try:
            return Path(snapshot_download(**kw))
        except GatedRepoError:
            raise FileNotFoundError(f"{what} is gated: accept its terms on huggingface.co and log in "
                                    f"(`hf auth login`, or set HF_TOKEN)") from None
        except RepositoryNotFoundError:
            raise FileNotFoundError(f"{what} does not exist on the hub, or is private (log in with "
                                    f"`hf auth login`, or set HF_TOKEN); no local folder {repo_id} exists "
                                    f"either") from None
        except RevisionNotFoundError:
            raise FileNotFoundError(f"{what}: the repo has no revision {rev!r} (a branch, tag or "
                                    f"commit hash)") from None
        except Exception as e:  # noqa: BLE001 - network, hub or disk trouble: the cache may still serve
            root = e.__cause__ or e  # huggingface_hub wraps the connection error that says what happened
            first = (str(root).strip().splitlines() or [""])[0]
            why = f"the hub could not be reached or the download failed ({type(root).__name__}: {first})"
            fix = "once with network access"
    try:
        return Path(snapshot_download(**kw, local_files_only=True))
    except Exception:  # noqa: BLE001 - not (completely) cached: one message below says what to do
        pass
    raise FileNotFoundError(f"{what} is not in the Hugging Face cache {cache} and {why}; no local folder "
                            f"{repo_id} exists either. Run {fix} to download it, or pass the path of a local "
                            f"checkpoint folder")
