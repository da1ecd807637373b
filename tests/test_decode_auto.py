"""mode="auto": the policy picks the fastest lossless strategy per step from measured step cost and
live acceptance, switching on the shared cache. Greedy output equals AR's token for token while it
switches (sampled output keeps AR's law: tests/test_decode_sampling.py); the profile it measures is
persisted and read back; the policy's choices follow its estimates.
"""
import json
from pathlib import Path

import pytest
import torch
from decode_helpers import run
from util import random_model, tiny_config

import trikern
from trikern.decode.policy import AutoPolicy, candidates
from trikern.decode.profile import StepProfile, measure


@pytest.fixture(scope="module")
def embedded():
    m = trikern.load(device="cpu", dtype=torch.bfloat16)
    return m.model, m.tokenizer


def test_auto_greedy_equals_ar_while_switching(embedded, monkeypatch):
    monkeypatch.setenv("TRIKERN_AUTOTUNE", "0")  # no profile: every candidate is measured on the fly
    model, tok = embedded
    prompt = tok.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")
    ar, _, _ = run(model, prompt, "ar", max_new_tokens=48)
    out, st, _ = run(model, prompt, "auto", max_new_tokens=48)
    assert out == ar
    used = st.as_dict()["strategies"]
    assert len(used) >= 3 and st.switches >= 2  # it measured several candidates on the fly
    assert sum(r["tokens"] for r in used.values()) >= 47  # every step is accounted for
    assert st.forwards == sum(r["forwards"] for r in used.values())


def test_auto_candidates():
    cfg = tiny_config(block_size=8)
    assert candidates("auto", 8, cfg) == [("ar", 1), ("spec-linear", 2), ("spec-linear", 4), ("spec-linear", 8),
                                          ("spec-quadratic", 2), ("spec-quadratic", 4), ("spec-quadratic", 8)]
    assert candidates("auto", 3, cfg) == [("ar", 1), ("spec-linear", 2), ("spec-quadratic", 2)]
    assert candidates("spec-linear", 5, cfg) == [("spec-linear", 5)]
    llama = tiny_config(model_type="llama", mask_token_id=None)
    assert candidates("auto", 8, llama) == [("ar", 1)]


def test_auto_on_an_ar_only_model_is_ar():
    m = random_model(tiny_config(model_type="llama", mask_token_id=None), seed=0)
    ar, _, _ = run(m, [1, 2, 3], "ar", max_new_tokens=10)
    out, st, _ = run(m, [1, 2, 3], "auto", max_new_tokens=10)
    assert out == ar and set(st.as_dict()["strategies"]) == {"ar/1"} and st.switches == 0


A, L, Q = ("ar", 1), ("spec-linear", 4), ("spec-quadratic", 4)


def warmed(policy, table):
    """Feed each key MEASURE warm steps of (tokens, seconds)."""
    for key, (tokens, seconds) in table.items():
        for _ in range(policy.MEASURE):
            policy.observe(key, tokens, seconds, cold=False)


def test_policy_measures_then_picks_the_highest_rate():
    p = AutoPolicy([A, L, Q])
    seen = []
    for _ in range(3 * p.MEASURE):
        k = p.choose()
        seen.append(k)
        p.observe(k, {A: 1, L: 3, Q: 4}[k], {A: 1.0, L: 1.5, Q: 4.0}[k], cold=False)
    assert seen == [A] * p.MEASURE + [L] * p.MEASURE + [Q] * p.MEASURE
    assert p.choose() == L  # 3 / 1.5 = 2 tok/s beats AR's 1 and quadratic's 1


def test_policy_ignores_cold_steps_and_keeps_hysteresis():
    p = AutoPolicy([A, L])
    p.observe(A, 1, 50.0, cold=True)  # a compile or graph capture: not a cost
    assert p.est[A].measured == 0
    warmed(p, {A: (1, 1.0), L: (2, 1.94)})
    p.current = A
    p.steps = 1
    assert p.choose() == A  # 1.03 tok/s is within the hysteresis of 1.0
    p.observe(L, 4, 1.94, cold=False)  # acceptance went up
    assert p.choose() == L


def test_policy_explores_a_stale_candidate_that_could_win():
    p = AutoPolicy([A, L, Q])
    warmed(p, {A: (1, 1.0), L: (1, 0.9), Q: (1, 10.0)})  # L best; Q could reach 4/10 < 1.1: never
    picks = [p.choose() for _ in range(2 * p.EXPLORE_EVERY)]
    assert Q not in picks
    p.est[A].last = -5  # A (could reach 1 / 1.0 < 1.11): not worth exploring either
    assert set(picks) == {L}
    p = AutoPolicy([A, L, Q])
    warmed(p, {A: (1, 0.5), L: (1, 1.0), Q: (1, 2.0)})  # A best (2 tok/s); L could reach 4: explore
    picks = [p.choose() for _ in range(p.EXPLORE_EVERY)]
    assert picks.count(L) == 1 and picks[-1] == L and Q not in picks


def test_profile_is_saved_and_primes_the_next_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    m = random_model(tiny_config(), seed=3)
    out, st, _ = run(m, [1, 2, 3], "auto", max_new_tokens=40, block_size=4)
    files = list(Path(tmp_path).rglob("decode-steps-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())["results"]
    keys = {k.rsplit("/", 1)[0] for k in saved}
    assert keys == {f"{mode}/{b}" for mode, b in candidates("auto", 4, m.cfg)}
    assert all(v["seconds"] > 0 and v["tokens"] >= 1 for v in saved.values())
    policy = AutoPolicy(candidates("auto", 4, m.cfg), StepProfile(m, 3))
    assert all(e.measured for e in policy.est.values())
    best = max(policy.keys, key=lambda k: policy.est[k].rate)
    assert policy.first() == best and policy.choose() == best  # no measuring needed


def test_measure_writes_every_candidate(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    m = random_model(tiny_config(), seed=3)
    lines = []
    prof = measure(m, cache_lengths=(16, 64), steps=2, block_size=2, log=lines.append)
    assert len(lines) == 2 * len(candidates("auto", 2, m.cfg))
    saved = json.loads(next(Path(tmp_path).rglob("decode-steps-*.json")).read_text())["results"]
    assert set(saved) == {f"{mode}/{b}/256" for mode, b in candidates("auto", 2, m.cfg)}  # smallest bucket
    assert all(prof.get(key)["seconds"] > 0 for key in candidates("auto", 2, m.cfg))
