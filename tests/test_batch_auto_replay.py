"""Batched `mode="auto"` replayed on recorded generations (benchmarks/replay_batch_auto.py): the real
AutoBatch chooses every step of the bench's batches at 2, 4 and 8 users, the recorded traces say what
each step yields and the tuned step costs per batch size what it takes; no forward runs, so the
decisions are judged without timing noise, on four machines (measured costs and three +-15% variants).
"""
import sys
from pathlib import Path

import pytest

from trikern.kernels import autotune_store

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
import replay_batch_auto as R  # noqa: E402


@pytest.fixture(scope="module")
def model():
    import trikern

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autotune_store, "shipped_dirs", lambda: [])
        yield trikern.load(dtype="bf16").model


# The acceptance prior `auto` runs on the three code prompts left in this project's EPYC profile
# (2026-12-07): their drafts fail at position 3, the bench's texts' drafts do not.
CODE_PRIOR = {"spec-linear": [0.34, 0.43, 0.822, 0.162, 0.25, 0.11, 0.126],
              "spec-quadratic": [0.33, 0.504, 0.719, 0.209, 0.183, 0.077, 0.061]}


def run(model, tmp: Path, monkeypatch, prior=None, evidence=None, **kw) -> dict:
    """machine -> c -> (auto over the best fixed setting, over the worst); `prior`: the batches'
    acceptance prior the profile holds at the start, behind `evidence` sequence-steps per family."""
    from trikern.decode.auto.profile import StepProfile

    monkeypatch.setattr(autotune_store, "shipped_dirs", lambda: [])
    out = {}
    for name, table in R.machines():
        monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp / name))
        if prior:
            StepProfile(model, 128).update({}, prior, batched=True,
                                           evidence=None if evidence is None else dict.fromkeys(prior, evidence))
        out[name] = {c: R.ratios(t) for c, t in R.replay(model, table, **kw).items()}
    return out


def test_fixed_settings_replay_every_token(model, tmp_path, monkeypatch):
    """Each user gets its whole budget under every setting, and a setting's time is its steps' costs."""
    context = 3 + R.NEW + 1
    for key in R.BATCH_MS:
        seqs = R.users(2, 0, context)
        t = R.fixed(key, seqs, R.BATCH_MS)
        assert all(s.done and len(s.tokens) == R.NEW for s in seqs)
        assert R.BATCH_MS[("ar", 1)][2] * 1e-3 <= t <= R.BATCH_MS[key][2] * 1e-3 * R.NEW


def test_auto_from_a_fresh_profile_holds_at_every_concurrency(model, tmp_path, monkeypatch):
    """Issue 22's goal on the decisions alone: auto >= 0.95x the best fixed setting and >= 1.5x the
    worst at 2, 4 and 8 users on every machine, from a profile with step costs but no acceptance
    learnt (a machine's first batches), with one decoder per concurrency (a server's) and with a new
    one per batch. A draining batch that never explored stayed in AR at 2 users there (0.78-0.97x;
    linear B = 4 or 8 was best)."""
    for fresh in (False, True):
        got = run(model, tmp_path / str(fresh), monkeypatch, fresh=fresh)
        for name, by_c in got.items():
            for c, (best, worst) in by_c.items():
                assert best >= 0.95 and worst >= 1.5, (fresh, name, c, got)


def test_auto_from_a_prior_other_texts_set_holds_at_every_concurrency(model, tmp_path, monkeypatch):
    """The same goal from a profile whose batches' acceptance prior other texts (code) set: it
    prices speculation below what the bench's texts give, and a draining batch that explored only
    families the profile had never learnt ran AR at 2 users throughout (0.77-0.97x; it now explores
    near-ties too, AutoBatch.drain_explorable)."""
    got = run(model, tmp_path, monkeypatch, prior=CODE_PRIOR, evidence=500)  # many generations taught it
    for name, by_c in got.items():
        for c, (best, worst) in by_c.items():
            assert best >= 0.95 and worst >= 1.5, (name, c, got)


def test_auto_from_a_prior_a_few_steps_set_holds_at_every_concurrency(model, tmp_path, monkeypatch):
    """The same goal from a batches' prior that two or three unlucky steps set (h1 = 0.8: linear B = 4
    priced at 1.25 tokens a step where the texts give ~2.8): trusted, it kept a draining batch in AR
    at 2 users (0.84-0.89x replayed, 0.71x in a real run); behind fewer than TAUGHT sequence-steps it
    is explored and taught (0.98-1.09x)."""
    got = run(model, tmp_path, monkeypatch, prior={"spec-linear": [0.8], "spec-quadratic": [0.8]}, evidence=3)
    for name, by_c in got.items():
        for c, (best, worst) in by_c.items():
            assert best >= 0.95 and worst >= 1.5, (name, c, got)


def test_auto_under_timing_noise_holds_at_every_concurrency(model, tmp_path, monkeypatch):
    """The same goal when the step times auto observes carry a shared VM's noise (spells of a
    slower machine, per-step jitter, hiccups; R.Noise) and a switch's first step is dearer: judged by
    the true times, its choices stay within 5% of the best fixed setting (0.967-1.085x over four
    seeds). Two seeds here."""
    for seed in (1, 2):
        got = run(model, tmp_path / str(seed), monkeypatch, noise=seed)
        for name, by_c in got.items():
            for c, (best, worst) in by_c.items():
                assert best >= 0.95 and worst >= 1.5, (seed, name, c, got)


def test_noise_is_seeded_and_noisy():
    a, b = R.Noise(3), R.Noise(3)
    seen = [a.seen(0.005) for _ in range(400)]
    assert seen == [b.seen(0.005) for _ in range(400)]
    spread = max(seen) / min(seen)
    assert 1.3 < spread and any(x > 0.005 * 1.8 for x in seen)  # spells and hiccups
