"""Stored step costs carry the stamp of the code that measured them: a cost another version of the
step code measured is not read (the warm-up measures it again) and the next write removes it, while
the texts' acceptance priors and exploration outcomes stay. The stamp moves with the step code and
not with auto's choosing. Writes held by `one_write` land as one file write."""
import json
import shutil
from pathlib import Path

import pytest

import trikern
from trikern.decode import AUTO, candidates
from trikern.decode.auto import profile as profile_mod
from trikern.decode.auto.profile import StepProfile, code_stamp, stamp_of
from trikern.kernels import autotune_store


@pytest.fixture
def m(tmp_path, monkeypatch):
    monkeypatch.setattr(autotune_store, "shipped_dirs", lambda: [])
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    return trikern.load(device="cpu")


def stored_file(tmp_path) -> dict:
    return json.loads(next(Path(tmp_path).rglob("decode-steps-*.json")).read_text())["results"]


def test_costs_of_other_code_are_not_read_and_go_at_the_next_write(m, tmp_path, monkeypatch):
    prof = StepProfile(m.model, 0)
    prof.save(("ar", 1), prof.bucket, 0.004, 1.0, 3)
    prof.save_batch({(("ar", 1), 4): (0.006, 1.0, 3)})
    prof.update({}, {"spec-linear": [0.2, 0.5]}, exploration=(1.0, 3.0, 1.0))
    assert stored_file(tmp_path)["ar/1/256"]["code"] == code_stamp()
    assert StepProfile(m.model, 0).get(("ar", 1))["seconds"] == 0.004
    assert StepProfile(m.model, 0).batch_seconds(("ar", 1)) == {1: 0.004, 4: 0.006}

    monkeypatch.setattr(profile_mod, "code_stamp", lambda: "another-code")
    later = StepProfile(m.model, 0)
    assert later.get(("ar", 1)) is None and later.batch_seconds(("ar", 1)) == {}
    assert later.get_acceptance("spec-linear") == pytest.approx([0.2, 0.5])  # the text's, not the code's
    assert later.get_exploration() == (1.0, 3.0, 1.0)
    assert "ar/1/256/x4" in stored_file(tmp_path)  # reading removes nothing

    later.save(("spec-linear", 4), later.bucket, 0.009, 2.5, 3)
    results = stored_file(tmp_path)
    assert "ar/1/256" not in results and "ar/1/256/x4" not in results
    assert results["spec-linear/4/256"]["code"] == "another-code"
    assert "spec-linear/acceptance" in results and "explore/outcomes" in results


def test_costs_without_a_stamp_are_stale(m, tmp_path):
    """A profile written before costs were stamped holds figures of unknown code."""
    prof = StepProfile(m.model, 0)
    prof.save(("ar", 1), prof.bucket, 0.004, 1.0, 3)
    path = next(Path(tmp_path).rglob("decode-steps-*.json"))
    data = json.loads(path.read_text())
    del data["results"]["ar/1/256"]["code"]
    path.write_text(json.dumps(data))
    assert StepProfile(m.model, 0).get(("ar", 1)) is None


def test_warmup_measures_costs_other_code_stored(m, monkeypatch):
    keys = candidates(AUTO, m.cfg.block_size, m.cfg)
    m.warmup(batch_sizes=(2,))
    before = {k: StepProfile(m.model, 0).get(k)["seconds"] for k in keys}
    monkeypatch.setattr(profile_mod, "code_stamp", lambda: "another-code")
    assert all(StepProfile(m.model, 0).get(k) is None for k in keys)
    m.warmup(batch_sizes=(2,))
    now = StepProfile(m.model, 0)
    assert all(now.get(k)["code"] == "another-code" for k in keys)
    assert all(set(now.batch_seconds(k)) == {1, 2} for k in keys)
    assert {k: now.get(k)["seconds"] for k in keys} != before  # measured again, not re-stamped


def test_the_stamp_moves_with_step_code_not_with_autos_choosing(tmp_path):
    pkg = tmp_path / "trikern"
    src = Path(profile_mod.__file__).resolve().parents[2]
    shutil.copytree(src, pkg, ignore=shutil.ignore_patterns("__pycache__", "assets", "*.json", "*.jsonl"))
    stamp = stamp_of(pkg)
    assert stamp == code_stamp()  # the copy's sources are the package's

    def edited(rel):
        f = pkg / rel
        old = f.read_text()
        f.write_text(old + "\n# an edit\n")
        try:
            return stamp_of(pkg)
        finally:
            f.write_text(old)

    for rel in ("kernels/attention.py", "model.py", "batch/steps.py", "decode/auto/tuning.py"):
        assert edited(rel) != stamp, rel
    for rel in ("decode/auto/policy.py", "batch/auto.py", "serve/app.py", "api.py"):
        assert edited(rel) == stamp, rel


def test_a_prior_moves_by_the_evidence_behind_it(m):
    """A generation moves the acceptance prior halfway, or further when the prior rests on fewer
    steps than the generation's figures (in proportion); the steps add up; a prior stored without
    its count counts as none."""
    prof = StepProfile(m.model, 0)
    prof.update({}, {"spec-linear": [0.8]}, batched=True, evidence={"spec-linear": 2})
    assert prof.acceptance_evidence("spec-linear", batched=True) == 2
    prof.update({}, {"spec-linear": [0.2, 0.4]}, batched=True, evidence={"spec-linear": 18})
    again = StepProfile(m.model, 0)
    assert again.get_acceptance("spec-linear", batched=True) == pytest.approx([0.8 + 0.9 * (0.2 - 0.8), 0.4])
    assert again.acceptance_evidence("spec-linear", batched=True) == 20
    again.update({}, {"spec-linear": [0.4]}, batched=True, evidence={"spec-linear": 4})  # halfway, not 4/24
    assert again.get_acceptance("spec-linear", batched=True)[0] == pytest.approx(0.26 + 0.5 * (0.4 - 0.26))
    assert again.get_acceptance("spec-linear") is None and again.acceptance_evidence("spec-linear") == 0
    again.update({}, {"spec-quadratic": [0.5]})  # no count given: halfway, none stored
    assert again.acceptance_evidence("spec-quadratic") == 0


def test_one_write_lands_the_writes_as_one_as_if_made_in_turn(m, tmp_path, monkeypatch):
    """A drained batch teaches the prior and saves its costs: inside `one_write` the profile file is
    written once, and it holds what the writes made in turn give (an entry written after a drop is
    there, one dropped after it was written is not)."""
    def writes(prof):
        prof.save(("ar", 1), prof.bucket, 0.004, 1.0, 3)
        prof.save_batch({(("ar", 1), 4): (0.006, 1.0, 3), (("spec-linear", 4), 2): (0.009, 2.0, 3)})
        prof.update({}, {"spec-linear": [0.2, 0.5]}, evidence={"spec-linear": 8})
        prof.save_batch({(("spec-linear", 4), 4): (0.012, 2.0, 3)}, replace=True)  # drops B=4's x2
        prof.update_batch({2: {("spec-linear", 4): (0.008, 5)}}, {4: (1.0, 2.0, 1.0)})  # ... writes it again

    in_turn, held = tmp_path / "in_turn", tmp_path / "held"
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(in_turn))
    writes(StepProfile(m.model, 0))
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(held))
    saved, save = [], autotune_store.save_results
    monkeypatch.setattr(autotune_store, "save_results", lambda *a, **k: saved.append(a) or save(*a, **k))
    prof = StepProfile(m.model, 0)
    with prof.one_write():
        with prof.one_write():  # nested: joins the outer write
            writes(prof)
        assert not saved and not list(held.rglob("decode-steps-*.json"))
    assert len(saved) == 1
    assert stored_file(held) == stored_file(in_turn)
    assert stored_file(held)["spec-linear/4/256/x2"]["seconds"] == 0.008
    assert prof.batch_seconds(("spec-linear", 4)) == StepProfile(m.model, 0).batch_seconds(("spec-linear", 4))
