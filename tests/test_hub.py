"""Hugging Face hub ids (`trikern.load("org/name")`, `--model org/name`), offline: a hub cache in the
real layout (models--org--name/{refs,blobs,snapshots}) holding the embedded model is built in a tmp
dir, and HF_HUB_OFFLINE / HF_HUB_CACHE point at it. No test touches the network."""
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from util import CHILD_ENV

import trikern
from trikern import hub
from trikern.api import DEFAULT_MODEL

REPO = "org/name"
MAIN = "0123456789abcdef0123456789abcdef01234567"  # refs/main
V1 = "fedcba9876543210fedcba9876543210fedcba98"    # refs/v1, a second snapshot (same files)
PROMPT = "def f(x):\n"
GEN = dict(mode="ar", max_new_tokens=6)


def _write_snapshot(repo_dir, commit):
    snap = repo_dir / "snapshots" / commit
    snap.mkdir(parents=True)
    for f in DEFAULT_MODEL.iterdir():
        blob = repo_dir / "blobs" / f"{commit[:8]}-{f.name}"  # the hub names blobs by hash; any name works
        if not blob.exists():
            shutil.copyfile(f, blob)
        (snap / f.name).symlink_to(f"../../blobs/{blob.name}")  # relative links, as huggingface_hub writes
    return snap


@pytest.fixture(scope="module")
def cache(tmp_path_factory):
    root = tmp_path_factory.mktemp("hf") / "hub"
    repo_dir = root / "models--org--name"
    (repo_dir / "blobs").mkdir(parents=True)
    (repo_dir / "refs").mkdir()
    (repo_dir / "refs" / "main").write_text(MAIN)  # no newline, as the hub writes it
    (repo_dir / "refs" / "v1").write_text(V1)
    _write_snapshot(repo_dir, MAIN)
    _write_snapshot(repo_dir, V1)
    return root


@pytest.fixture
def offline(cache, monkeypatch, tmp_path):
    """HF_HUB_OFFLINE=1 and the fake cache, for trikern (which reads the env at call time) and for
    huggingface_hub's import-time constants alike, whichever order things were imported in."""
    import huggingface_hub.constants as c  # noqa: PLC0415

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))  # never the user's ~/.cache/huggingface
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(c, "HF_HUB_CACHE", str(cache))
    return cache


@pytest.fixture(scope="module")
def reference():
    m = trikern.load(DEFAULT_MODEL, device="cpu", dtype=torch.float32)
    return m.generate(PROMPT, **GEN).token_ids


def test_hub_id_recognition():
    for s in ["org/name", "nvidia/Nemotron-Labs-Diffusion-3B", "meta-llama/Llama-3.2-1B-Instruct", "a_b/c.d"]:
        assert hub.is_hub_id(s), s
    for s in ["name", "./org/name", "/org/name", "org/name/x", "org//name", "org/", "a--b/c", "a/b..c", "a/.b",
              "a/b-", "org/na me", "C:/x", "~/x", "x" * 97 + "/y"]:
        assert not hub.is_hub_id(s), s


def test_only_checkpoint_files_are_downloaded():
    from huggingface_hub.utils import filter_repo_objects  # noqa: PLC0415

    repo = ["config.json", "generation_config.json", "model.safetensors", "model-00001-of-00002.safetensors",
            "model.safetensors.index.json", "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "chat_template.jinja", "additional_chat_templates/tool.jinja", "linear_spec_lora/adapter_config.json",
            "linear_spec_lora/adapter_model.safetensors", "pytorch_model.bin", "model.pt", "model.pth",
            "model-Q4_K_M.gguf", "original/params.json", "original/consolidated.00.pth", "sub/original/x.json",
            "consolidated.safetensors", "README.md", ".gitattributes", "flax_model.msgpack", "onnx/model.onnx"]
    kept = set(filter_repo_objects(repo, allow_patterns=hub.ALLOW_PATTERNS, ignore_patterns=hub.IGNORE_PATTERNS))
    assert kept == set(repo[:12])


def test_load_by_hub_id_from_the_cache_generates_as_the_folder(offline, reference):
    m = trikern.load(REPO, device="cpu", dtype=torch.float32)
    assert m.path == offline / "models--org--name" / "snapshots" / MAIN
    assert m.generate(PROMPT, **GEN).token_ids == reference


def test_revisions(offline, reference):
    snaps = offline / "models--org--name" / "snapshots"
    assert hub.resolve(REPO) == hub.resolve(REPO, revision="main") == snaps / MAIN
    assert hub.resolve(REPO, revision="v1") == snaps / V1
    assert hub.resolve(REPO, revision=V1) == snaps / V1
    m = trikern.load(REPO, revision=V1, device="cpu", dtype=torch.float32)
    assert m.path == snaps / V1
    assert m.generate(PROMPT, **GEN).token_ids == reference


def _assert_one_clear_error(excinfo, *named):
    msg = str(excinfo.value)
    for s in named:
        assert s in msg, msg
    assert "\n" not in msg
    # our own error, huggingface_hub's chain hidden: no traceback of its internals
    e = excinfo.value
    assert e.__cause__ is None and (e.__context__ is None or e.__suppress_context__)
    assert type(e) is FileNotFoundError


def test_missing_repo_is_one_clear_error(offline):
    with pytest.raises(FileNotFoundError) as e:
        trikern.load("org/missing", device="cpu")
    _assert_one_clear_error(e, "'org/missing'", "'main'", str(offline), "HF_HUB_OFFLINE", "local")


def test_missing_revision_is_one_clear_error(offline):
    with pytest.raises(FileNotFoundError) as e:
        trikern.load(REPO, revision="v2", device="cpu")
    _assert_one_clear_error(e, "'org/name'", "'v2'", str(offline))


def test_unreachable_hub_falls_back_to_the_cache(offline, monkeypatch):
    """Online, but the hub cannot be reached: the cached snapshot, or one error saying why."""
    import huggingface_hub.constants as c  # noqa: PLC0415

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(c, "ENDPOINT", "http://127.0.0.1:9")  # the discard port: connection refused
    assert hub.resolve(REPO) == offline / "models--org--name" / "snapshots" / MAIN
    with pytest.raises(FileNotFoundError) as e:
        hub.resolve("org/missing")
    _assert_one_clear_error(e, "'org/missing'", str(offline), "could not be reached")


@pytest.fixture
def online(offline, monkeypatch):
    """Online, with huggingface_hub's snapshot_download replaced by `fake` (set by the test)."""
    import huggingface_hub  # noqa: PLC0415
    import huggingface_hub.constants as c  # noqa: PLC0415

    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(c, "HF_HUB_OFFLINE", False)
    calls = []

    def use(fake):
        def snapshot_download(**kw):
            calls.append(kw)
            return fake(**kw)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        return calls
    return use


def test_online_download_asks_for_the_checkpoint_files_only(online, cache):
    snap = cache / "models--org--name" / "snapshots" / V1
    calls = online(lambda **kw: str(snap))
    assert hub.resolve(REPO, revision="v1") == snap
    (kw,) = calls
    assert kw["repo_id"] == REPO and kw["revision"] == "v1" and str(kw["cache_dir"]) == str(cache)
    assert kw["allow_patterns"] == hub.ALLOW_PATTERNS and kw["ignore_patterns"] == hub.IGNORE_PATTERNS
    assert not kw.get("local_files_only")


@pytest.mark.parametrize("error, named", [
    ("GatedRepoError", "is gated"),
    ("RepositoryNotFoundError", "does not exist on the hub, or is private"),
    ("RevisionNotFoundError", "the repo has no revision 'v9'"),
])
def test_hub_refusals_are_one_clear_error(online, error, named):
    from huggingface_hub import utils  # noqa: PLC0415

    def refuse(**kw):
        cls = getattr(utils, error)
        e = cls.__new__(cls)  # their constructors differ between huggingface_hub versions
        Exception.__init__(e, "huggingface_hub internals")
        raise e
    online(refuse)
    with pytest.raises(FileNotFoundError) as e:
        trikern.load("org/other", revision="v9")
    _assert_one_clear_error(e, "hub repo 'org/other' (revision 'v9')", named)
    assert "internals" not in str(e.value)


def test_existing_local_path_wins(offline, monkeypatch, tmp_path):
    local = tmp_path / "org" / "name"
    shutil.copytree(DEFAULT_MODEL, local)
    monkeypatch.chdir(tmp_path)
    assert hub.resolve(REPO).resolve() == local
    assert trikern.load(REPO, device="cpu", dtype=torch.float32).path.resolve() == local
    with pytest.raises(ValueError, match=r"^revision='main' applies to Hugging Face hub ids, but org/name is a local"):
        trikern.load(REPO, revision="main")


def test_bad_revision_and_non_hub_paths(offline):
    with pytest.raises(ValueError, match="^revision='v1' applies to Hugging Face hub ids"):
        trikern.load(revision="v1")  # the embedded model is local
    for bad in (5, "", " "):
        with pytest.raises(ValueError, match=r"^revision=.*: expected a branch, tag or commit hash"):
            trikern.load(REPO, revision=bad)
    for path in ("./org/name", "no/such/folder", "/no/such"):
        with pytest.raises(FileNotFoundError, match="^model folder .* does not exist$"):
            trikern.load(path)


def _cli(*args, cache):
    env = {**CHILD_ENV, "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache), "HF_HOME": str(cache.parent / "home")}
    return subprocess.run([sys.executable, "-m", "trikern", "generate", *args], capture_output=True, text=True,
                          env=env, timeout=300)


def test_cli_model_takes_a_hub_id_and_revision(cache, reference):
    r = _cli("--model", REPO, "--revision", "v1", "--device", "cpu", "--dtype", "float32", "--mode", "ar",
             "--max-new-tokens", str(GEN["max_new_tokens"]), "--json", PROMPT, cache=cache)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["token_ids"] == reference


def test_cli_missing_repo_is_one_line_and_exit_2(cache):
    r = _cli("--model", "org/missing", "--dtype", "float32", "x", cache=cache)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("trikern generate: error: hub repo 'org/missing'"), r.stderr


def test_served_model_name_of_a_hub_id(offline, tmp_path, monkeypatch):
    """`trikern serve --model org/name` answers to "org/name", not to its snapshot's commit hash."""
    from trikern.serve.launch import served_name

    folder = trikern.load(REPO, device="cpu", dtype=torch.float32).path
    assert served_name(REPO, folder) == REPO and folder.name != REPO.split("/")[1]
    assert served_name(None, DEFAULT_MODEL) == "trikern-default"
    monkeypatch.chdir(tmp_path)
    shutil.copytree(DEFAULT_MODEL, tmp_path / "org" / "name")  # a local folder of that name: its name
    assert served_name(REPO, Path("org/name")) == "name"
