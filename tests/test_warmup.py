"""Warm-up: `trikern.load(..., warmup=True)` runs every strategy auto may pick (and diffusion) before
the first request, reports how long it took, and leaves no state behind (the next generation is
the same as on a cold model); the CLI does it on request (by default only on CUDA)."""
import subprocess
import sys

import pytest
from util import CHILD_ENV

import trikern


def test_load_with_warmup_reports_time_and_changes_nothing():
    warm = trikern.load(warmup=True, device="cpu")
    cold = trikern.load(device="cpu")
    assert warm.warmup_s > 0 and cold.warmup_s is None
    a = warm.generate("def f(x):\n", mode="spec-quadratic", max_new_tokens=12)
    b = cold.generate("def f(x):\n", mode="spec-quadratic", max_new_tokens=12)
    assert a.token_ids == b.token_ids and a.stats["cached_tokens"] == 0  # warm-up held no cache


def test_warmup_must_be_a_bool():
    with pytest.raises(ValueError, match="warmup"):
        trikern.load(warmup="yes", device="cpu")


def test_cli_warmup_flag():
    r = subprocess.run([sys.executable, "-m", "trikern", "generate", "--warmup", "--max-new-tokens", "4", "x"],
                       capture_output=True, text=True, env=CHILD_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "warm-up took" in r.stderr


def test_warmup_measures_autos_missing_step_costs(tmp_path, monkeypatch):
    """A device with no stored step costs gets them all in the warm-up (not on the fly in the first
    auto generations); one that has them keeps them."""
    from trikern.decode import AUTO, candidates
    from trikern.decode.auto.profile import StepProfile
    from trikern.kernels import autotune_store

    monkeypatch.setattr(autotune_store, "shipped_dirs", lambda: [])
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    m = trikern.load(device="cpu")
    keys = candidates(AUTO, m.cfg.block_size, m.cfg)
    assert all(StepProfile(m.model, 0).get(k) is None for k in keys)
    m.warmup()
    stored = {k: StepProfile(m.model, 0).get(k) for k in keys}
    assert all(v is not None and v["seconds"] > 0 for v in stored.values()), stored
    m.warmup()  # nothing missing: nothing re-measured
    assert {k: StepProfile(m.model, 0).get(k) for k in keys} == stored
