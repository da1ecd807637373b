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
from trikern.decode.policy import Acceptance, AutoPolicy, candidates
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


A, L2, L8, Q4 = ("ar", 1), ("spec-linear", 2), ("spec-linear", 8), ("spec-quadratic", 4)


def costed(keys, seconds):
    """A policy whose candidates' step costs are known (as from a profile)."""
    p = AutoPolicy(keys)
    for k, s in zip(keys, seconds):
        for _ in range(p.MEASURE):
            p.observe(k, 1, s, cold=False)
    return p


def test_acceptance_model():
    a = Acceptance()
    assert a.rate == 0.5 and a.expected_tokens(1) == 1 and a.expected_tokens(3) == pytest.approx(1.75)
    p = AutoPolicy([L2, L8, Q4])
    for _ in range(20):  # B = 8 steps that accept every draft: the rate goes to 1 for B = 2 as well
        p.observe(L8, 8, 1.0, cold=False, drafted=7)
    assert p.acc["spec-linear"].rate > 0.95 and p.tokens(L2) > 1.9 and p.tokens(L8) > 6
    for _ in range(20):  # then nothing is accepted
        p.observe(L2, 1, 1.0, cold=False, drafted=1)
    low = p.acc["spec-linear"].rate
    assert low < 0.4 and p.tokens(L8) < 1.7  # (the long-run rate, 0.87 so far, still holds it up a little)
    p = AutoPolicy([A, L2, L8, Q4])
    p.acc["spec-linear"].total_accepted, p.acc["spec-linear"].total_rejected = 80.0, 20.0
    for _ in range(10):
        p.observe(L2, 1, 1.0, cold=False, drafted=1)
    assert p.acc["spec-linear"].rate < 0.5
    for _ in range(30):  # while AR runs, what was learnt fades back to the long-run rate
        p.observe(A, 1, 1.0, cold=False)
    assert p.acc["spec-linear"].rate == pytest.approx(p.acc["spec-linear"].long_run, abs=0.05)
    assert p.acc["spec-quadratic"].rate == pytest.approx(0.5)  # the other family learnt nothing
    p.observe(Q4, 1, 1.0, cold=False, drafted=0)  # a quadratic restart verifies no draft: no evidence
    assert p.acc["spec-quadratic"].rate == pytest.approx(0.5)


def test_policy_measures_each_candidate_then_picks_the_highest_rate():
    p = AutoPolicy([A, L2, L8])
    seen = []
    for _ in range(3 * p.MEASURE):
        k = p.choose()
        seen.append(k)
        p.observe(k, 1 if k == A else k[1], {A: 1.0, L2: 1.5, L8: 2.0}[k], cold=False, drafted=k[1] - 1)
    assert seen == [A] * p.MEASURE + [L2] * p.MEASURE + [L8] * p.MEASURE
    assert p.choose() == L8  # everything accepted: 8 tokens in 2 s beats 2 in 1.5 s and AR's 1 in 1 s


def test_policy_ignores_cold_steps_and_keeps_hysteresis():
    p = AutoPolicy([A, L2])
    p.observe(A, 1, 50.0, cold=True)  # a compile or graph capture: not a cost
    assert p.cost[A].measured == 0
    p = costed([A, L2], [1.0, 1.45])  # L2 at a = 0.5: 1.5 tokens / 1.45 s = 1.03 tok/s
    p.current, p.steps = A, 1
    assert p.choose() == A  # within the hysteresis of AR's 1.0
    p.observe(L2, 2, 1.45, cold=False, drafted=1)  # acceptance went up: 1.67 / 1.45 = 1.15 tok/s
    assert p.choose() == A
    p.observe(L2, 2, 1.45, cold=False, drafted=1)  # and up again: clearly better
    assert p.choose() == L2


def test_policy_explores_what_could_win_within_its_time_share():
    p = costed([A, L2, Q4], [1.0, 10.0, 10.0])  # AR best; L2 could reach 2 / 10 s: never worth it
    assert [p.choose() for _ in range(3 * p.EXPLORE_EVERY)] == [A] * 3 * p.EXPLORE_EVERY
    cost = {A: 1.0, L2: 1.6, Q4: 3.5}  # AR best at a = 0.5, but L2 (2 / 1.6) and Q4 (4 / 3.5) could win
    p = costed(list(cost), list(cost.values()))
    picks = []
    for _ in range(8 * p.EXPLORE_EVERY):
        k = p.choose()
        picks.append((k, p.explored is not None))
        p.observe(k, 1, cost[k], cold=False, drafted=k[1] - 1)  # nothing accepted: AR stays best
    explored = [i for i, (k, e) in enumerate(picks) if e]
    assert all(k == A for k, e in picks if not e)
    assert {picks[i][0] for i in explored} == {L2, Q4}  # the stale one first, in turn
    assert all((i + 1) % p.EXPLORE_EVERY == 0 for i in explored)
    assert p.explore_s <= p.EXPLORE_SHARE * p.seconds + max(cost.values())  # the cap, up to one step


def test_profile_is_saved_and_primes_the_next_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    m = random_model(tiny_config(), seed=3)
    out, st, _ = run(m, [1, 2, 3], "auto", max_new_tokens=40, block_size=4)
    files = list(Path(tmp_path).rglob("decode-steps-*.json"))
    assert len(files) == 1
    saved = json.loads(files[0].read_text())["results"]
    keys = {k.rsplit("/", 1)[0] for k in saved if k.count("/") == 2}
    assert keys == {f"{mode}/{b}" for mode, b in candidates("auto", 4, m.cfg)}
    assert all(v["seconds"] > 0 and v["tokens"] >= 1 for k, v in saved.items() if k.count("/") == 2)
    assert 0 <= saved["spec-linear/acceptance"]["rate"] <= 1  # the acceptance it ended with
    policy = AutoPolicy(candidates("auto", 4, m.cfg), StepProfile(m, 3))
    assert all(c.measured for c in policy.cost.values())
    best = max(policy.keys, key=policy.rate)
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


def test_a_slow_spell_moves_the_speed_not_the_running_candidates_cost():
    p = costed([A, L2], [1.0, 1.2])
    for _ in range(5):
        p.observe(L2, 2, 1.2, cold=False, drafted=1)  # L2 accepts: 1.8 tokens / 1.2 s beats AR
    assert p.choose() == L2
    for _ in range(10):  # the machine slows down 3x while L2 runs (accepting as before)
        p.observe(L2, 2, 3.6, cold=False, drafted=1)
    assert p.speed > 2.5  # (the first steps, before the speed caught up, leak a little into the cost)
    assert p.cost[L2].seconds < 1.2 * 1.2 and p.choose() == L2  # a plain running average would say 3.6
