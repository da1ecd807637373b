"""Autotune: CPU benchmarker runs every config, memo, JSON persistence (atomic, corrupt/foreign files
ignored with a warning), directory choice, shipped package data after a non-editable install, prune,
the launcher protocol (choose returns a config, the launcher launches it), `tuning()` and `trikern tune`'s
option errors."""
import json
import os
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
from install_util import install, package_copy
import torch

from trikern.cli import main
from trikern.kernels import autotune as at
from trikern.kernels import autotune_store as store

ROOT = Path(__file__).resolve().parents[1]
CONFIGS = [{"BLOCK": 16, "num_warps": 1}, {"BLOCK": 32, "num_warps": 2}, {"BLOCK": 64, "num_warps": 4}]


@pytest.fixture(autouse=True)
def fresh(monkeypatch, tmp_path):
    """Each test gets its own result directory and an empty memo."""
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path / "tuned"))
    monkeypatch.delenv("TRIKERN_AUTOTUNE", raising=False)
    at.clear_memo()
    yield
    at.enable()
    at.clear_memo()


def recorder():
    calls = []
    return calls, calls.append


def never(cfg):
    raise AssertionError(f"run({cfg}) called although a result was stored")


def stored_path(op):
    return at.result_path(at.write_dir(), at.INTERPRETER_GPU, op)


def test_bucket():
    assert [at.bucket(n) for n in (0, 1, 16, 17, 100, 1024, 1025)] == [16, 16, 16, 32, 128, 1024, 2048]
    assert at.bucket(3, floor=1) == 4 and at.bucket(1, floor=1) == 1


def test_interpreter_runs_every_config_once_then_memo():
    calls, run = recorder()
    best = at.choose("t_every", (16, "float32"), CONFIGS, run)
    assert calls == CONFIGS and best in CONFIGS  # each config once, nothing re-run after the sweep
    assert at.choose("t_every", (16, "float32"), CONFIGS, never) == best
    calls.clear()
    at.choose("t_every", (32, "float32"), CONFIGS, run)  # another bucket tunes again
    assert calls == CONFIGS


def test_one_protocol_no_launched_flag():
    """choose() only answers; every launcher then launches with the answer (no 'already launched'
    state to consult), verify included."""
    assert not hasattr(at, "launched") and not hasattr(at, "launch") and not hasattr(at, "_filled")
    for mod in at.kernel_modules():
        src = Path(mod.__file__).read_text()
        if "autotune.choose(" in src:
            assert "config = autotune.choose(" in src and "    run(config)\n" in src, mod.__name__


def test_tuning_overrides_env_without_changing_it(monkeypatch, tmp_path):
    """trikern tune's options reach choose() through tuning(): it tunes although TRIKERN_AUTOTUNE=0,
    writes to its own directory, re-benchmarks stored keys unless force=False, and leaves the
    environment and the process-wide switches as they were."""
    at.save_result(at.write_dir(), at.INTERPRETER_GPU, "t_tuning", str((1,)), CONFIGS[2])
    monkeypatch.setenv("TRIKERN_AUTOTUNE", "0")
    before = dict(os.environ)
    out = tmp_path / "out"
    calls, run = recorder()
    with at.tuning(out=out, force=True):
        assert at.write_dir() == out and at.enabled()
        best = at.choose("t_tuning", (1,), CONFIGS, run)
        assert calls == CONFIGS  # benchmarked although a result was stored and the environment says off
        with pytest.raises(RuntimeError, match="nest"):
            with at.tuning():
                pass
    assert dict(os.environ) == before and not at.enabled()
    saved = json.loads(at.result_path(out, at.INTERPRETER_GPU, "t_tuning").read_text())["results"]
    assert saved == {"(1,)": best}
    assert at.choose("t_tuning", (1,), CONFIGS, never) == CONFIGS[0]  # TRIKERN_AUTOTUNE=0 again
    at.save_result(out, at.INTERPRETER_GPU, "t_tuning", str((1,)), CONFIGS[1])
    with at.tuning(out=out, force=False):  # --keep: stored results answer
        assert at.choose("t_tuning", (1,), CONFIGS, never) == CONFIGS[1]


def test_tune_rejects_unknown_ops(capsys):
    assert main(["tune", "--ops", "rope,bogus"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("trikern tune: error: --ops: unknown op bogus; known: ") and "rope" in err
    assert len(err.splitlines()) == 1
    assert main(["tune", "--ops", ","]) == 2
    assert "selects no op" in capsys.readouterr().err


def test_disabled_returns_first_config(monkeypatch):
    monkeypatch.setenv("TRIKERN_AUTOTUNE", "0")
    assert at.choose("t_off", (1,), CONFIGS, never) == CONFIGS[0]
    monkeypatch.delenv("TRIKERN_AUTOTUNE")
    at.disable()
    assert at.choose("t_off", (1,), CONFIGS, never) == CONFIGS[0]
    at.enable()
    calls, run = recorder()
    at.choose("t_off", (1,), CONFIGS, run)
    assert calls == CONFIGS


def test_persisted_and_reloaded():
    best = at.choose("t_persist", (64, "bfloat16", True), CONFIGS, lambda c: None)
    data = json.loads(stored_path("t_persist").read_text())
    assert data["schema"] == at.SCHEMA and data["triton"] == at.triton_version() and data["op"] == "t_persist"
    assert data["results"] == {str((64, "bfloat16", True)): best}
    at.clear_memo()  # a new process: the file answers
    assert at.choose("t_persist", (64, "bfloat16", True), CONFIGS, never) == best


def test_not_persisted_without_explicit_dir(monkeypatch, tmp_path):
    monkeypatch.delenv("TRIKERN_AUTOTUNE_DIR")
    before = {p for d in at.read_dirs() if d.exists() for p in d.rglob("t_nowrite.json")}
    at.choose("t_nowrite", (1,), CONFIGS, lambda c: None)
    after = {p for d in at.read_dirs() if d.exists() for p in d.rglob("t_nowrite.json")}
    assert before == after == set()


def test_stale_config_is_retuned():
    at.save_result(at.write_dir(), at.INTERPRETER_GPU, "t_stale", str((1,)), {"BLOCK": 8, "num_warps": 1})
    calls, run = recorder()
    assert at.choose("t_stale", (1,), CONFIGS, run) in CONFIGS and calls == CONFIGS


def test_atomic_write_keeps_old_file_on_failure():
    path = at.save_result(at.write_dir(), "GPU_X", "t_atomic", "(1,)", CONFIGS[0])
    old = path.read_text()
    with pytest.raises(TypeError):
        at.save_result(at.write_dir(), "GPU_X", "t_atomic", "(2,)", {"BLOCK": object()})
    assert path.read_text() == old
    assert sorted(p.name for p in path.parent.iterdir()) == ["t_atomic.json"]  # no temp file left
    at.save_result(at.write_dir(), "GPU_X", "t_atomic", "(2,)", CONFIGS[1])
    assert json.loads(path.read_text())["results"] == {"(1,)": CONFIGS[0], "(2,)": CONFIGS[1]}


@pytest.mark.parametrize("content, why", [
    ("{not json", "unreadable"),
    (json.dumps([1, 2]), "schema"),
    (json.dumps({"schema": 1, "op": "t_bad", "triton": "0.0.1", "results": {"(1,)": CONFIGS[2]}}), "triton"),
    (json.dumps({"schema": 1, "op": "other", "triton": None, "results": {}}), "op"),
    (json.dumps({"schema": 1, "op": "t_bad", "triton": None, "results": {"(1,)": [1]}}), "results"),
])
def test_corrupt_or_foreign_file_warns_and_retunes(content, why):
    path = stored_path("t_bad")
    path.parent.mkdir(parents=True)
    path.write_text(content.replace("null", json.dumps(at.triton_version())))
    calls, run = recorder()
    with pytest.warns(UserWarning, match=f"ignoring.*{why}" if why != "unreadable" else "unreadable"):
        best = at.choose("t_bad", (1,), CONFIGS, run)
    assert calls == CONFIGS
    assert json.loads(path.read_text())["results"] == {"(1,)": best}  # replaced by a valid file


def test_key_must_be_plain_values():
    with pytest.raises(TypeError, match="key"):
        at.choose("t_key", (torch.float16,), CONFIGS, never)
    with pytest.raises(TypeError, match="tuple"):
        at.choose("t_key", [1], CONFIGS, never)
    with pytest.raises(ValueError, match="empty"):
        at.choose("t_key", (1,), [], never)


def test_directories(monkeypatch, tmp_path):
    assert at.write_dir() == tmp_path / "tuned" and tmp_path / "tuned" in at.read_dirs()
    assert at.shipped_dirs()[0] == ROOT / "trikern" / "autotune"
    monkeypatch.delenv("TRIKERN_AUTOTUNE_DIR")
    assert at.write_dir() == ROOT / "autotune_cache"  # a writable checkout
    import platformdirs
    user = Path(platformdirs.user_cache_dir("trikern")) / "autotune"
    monkeypatch.setattr(store, "_CHECKOUT_ROOT", tmp_path)  # an installed package: no checkout around it
    assert at.write_dir() == user
    assert at.shipped_dirs() == [store._PACKAGE_DIR / "autotune"]


def test_read_only_checkout_falls_back_to_user_cache(monkeypatch, tmp_path):
    import platformdirs
    monkeypatch.delenv("TRIKERN_AUTOTUNE_DIR")
    ro = tmp_path / "ro_checkout"
    ro.mkdir()
    (ro / "pyproject.toml").write_text("")
    ro.chmod(0o555)
    try:
        if os.access(ro, os.W_OK):
            pytest.skip("running as root: a read-only directory is still writable")
        monkeypatch.setattr(store, "_CHECKOUT_ROOT", ro)
        assert at.write_dir() == Path(platformdirs.user_cache_dir("trikern")) / "autotune"
    finally:
        ro.chmod(0o755)


def test_shipped_results_found_after_plain_install(tmp_path):
    """Build and install (non-editable) a copy carrying a shipped result; a fresh process reads it."""
    src = package_copy(tmp_path, "*.json")
    shipped = {"BLOCK": 32, "num_warps": 2}
    at.save_result(src / "trikern" / "autotune", at.INTERPRETER_GPU, "t_ship", str((7,)), shipped)
    site = install(src, tmp_path)
    code = "\n".join([
        "from trikern.kernels import autotune as at",
        "assert 'site' in at.__file__, at.__file__",
        "def never(c): raise SystemExit('benchmarked instead of reading the shipped result')",
        f"print(at.choose('t_ship', (7,), {CONFIGS!r}, never))",
    ])
    env = dict(os.environ, PYTHONPATH=str(site), TRIKERN_AUTOTUNE_DIR=str(tmp_path / "empty"),
               TRITON_INTERPRET="1")
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(shipped)


def test_prune_by_shared_memory():
    cfgs = [{"S": 64 * 1024}, {"S": 120 * 1024}, {"S": 200 * 1024}, {"S": 300 * 1024}]
    est = lambda c: c["S"]  # noqa: E731
    assert at.prune(cfgs, 80, est) == cfgs[:2]  # 163 KB
    assert at.prune(cfgs, 90, est) == cfgs[:3]  # 227 KB
    assert at.prune(cfgs, 121, est) == cfgs[:1]  # 99 KB
    assert at.smem_limit(89) == 99 * 1024 and at.smem_limit(91) == at.smem_limit(90)
    with pytest.raises(ValueError, match="sm_121"):
        at.prune(cfgs[3:], 121, est)


def test_tune_without_cuda_exits_nonzero(capsys):
    assert main(["tune"]) != 0
    assert "CUDA" in capsys.readouterr().err


def test_kernel_modules_define_tune_shapes():
    names = {m.__name__.rsplit(".", 1)[-1] for m in at.kernel_modules() if hasattr(m, "tune_shapes")}
    assert {"rope", "rmsnorm", "swiglu"} <= names
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert at.gpu_name() == at.INTERPRETER_GPU
