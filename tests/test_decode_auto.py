"""mode="auto": the policy picks the fastest lossless strategy per step from measured step cost and
live acceptance, switching on the shared cache. Greedy output equals AR's token for token while it
switches (sampled output keeps AR's law: tests/test_decode_sampling.py); the profile it measures is
persisted and read back; the policy's choices follow its estimates.
"""
import json
from pathlib import Path

import pytest
import torch
from decode_helpers import run, run_cycle
from util import random_model, tiny_config

import trikern
from trikern.decode import candidates
from trikern.decode.auto.acceptance import Acceptance
from trikern.decode.auto.exploration import Exploration
from trikern.decode.auto.policy import AutoPolicy
from trikern.decode.auto.profile import StepProfile
from trikern.decode.auto.tuning import measure


@pytest.fixture(scope="module")
def embedded():
    m = trikern.load(device="cpu", dtype=torch.bfloat16)
    return m.model, m.tokenizer


def test_auto_greedy_equals_ar_while_switching(embedded, monkeypatch):
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")  # no profile: every candidate is measured on the fly
    model, tok = embedded
    prompt = tok.encode("def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n")
    ar, _, _ = run(model, prompt, "ar", max_new_tokens=48)
    out, st, _ = run(model, prompt, "auto", max_new_tokens=48)
    assert out == ar
    used = st.as_dict()["strategies"]
    assert len(used) >= 3 and st.switches >= 2  # it measured several candidates on the fly
    assert sum(r["tokens"] for r in used.values()) >= 47  # every step is accounted for
    assert st.forwards == sum(r["forwards"] for r in used.values())


def test_switching_quadratic_block_sizes_keeps_the_draft():
    """A quadratic step after another quadratic block size verifies that strategy's draft (cut to B,
    or shorter than B) instead of restarting from one token; greedy output stays AR's (fp32: no
    bf16 near-ties between differently shaped passes)."""
    m = trikern.load(device="cpu", dtype=torch.float32)
    model, tok = m.model, m.tokenizer
    prompt = tok.encode("| id | name |\n|----|------|\n| 1 | ant |\n| 2 | bee |\n| 3 | cat |\n")
    ar, _, _ = run(model, prompt, "ar", max_new_tokens=40)
    Q8, Q2, Q4 = ("spec-quadratic", 8), ("spec-quadratic", 2), ("spec-quadratic", 4)
    out, st, _, policy = run_cycle(model, prompt, [Q8, Q2, Q4], max_new_tokens=40, block_size=8)
    assert out == ar
    assert st.switches == len(policy.drafted)  # every step switches (the prefill ran Q8)
    # The draft left by the step before, cut to this step's B (Q8 -> Q2: 1 draft; Q2 -> Q4: 1; Q4 -> Q8: 3).
    assert [d for _, d in policy.drafted] == [{Q8: 3, Q2: 1, Q4: 1}[k] for k, _ in policy.drafted]
    assert any(t > 2 for t in st.acceptance_lengths)  # drafts were accepted past the restart token


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


A, L2, L4, L8, Q4 = ("ar", 1), ("spec-linear", 2), ("spec-linear", 4), ("spec-linear", 8), ("spec-quadratic", 4)
L16 = ("spec-linear", 16)


def costed(keys, seconds):
    """A policy whose candidates' step costs are known (as from a profile)."""
    p = AutoPolicy(keys)
    for k, s in zip(keys, seconds):
        p.costs.cost[k].seconds, p.costs.cost[k].measured = s, p.costs.MEASURE
    return p


def test_acceptance_prior_and_per_position_hazards():
    a = Acceptance(horizon=15)
    assert a.hazards(3) == [0.5] * 3 and a.expected_tokens(1) == 1 and a.expected_tokens(3) == pytest.approx(1.75)
    # Steps of 15 drafts whose accepted lengths are far from geometric (as measured on the embedded
    # model: mostly 1-3 tokens, else the whole block): per-position hazards recover the expected
    # tokens of every block size, which one acceptance rate cannot.
    hist = {1: 128, 2: 150, 3: 204, 4: 32, 5: 16, 6: 12, 7: 2, 8: 8, 9: 6, 16: 46}
    steps = [t for t, c in hist.items() for _ in range(c)]
    for t in steps:
        a.step(1.0, drafted=15, accepted=t - 1)  # no decay: the long run
    for B in (2, 4, 8, 16):
        assert a.expected_tokens(B) == pytest.approx(sum(min(t, B) for t in steps) / len(steps), rel=0.01)
    # Positions never reached inherit the hazard of the last one measured (a geometric tail).
    b = Acceptance(horizon=15)
    for i in range(40):
        b.step(1.0, drafted=3, accepted=3 if i % 4 else 1)
    h = b.hazards(8)
    assert h[0] < 0.1 and h[3:] == pytest.approx([h[2]] * 5, abs=0.02)
    assert b.long_run() == pytest.approx(b.hazards(3), abs=0.05)


def test_acceptance_is_live_and_fades_back_to_the_long_run():
    p = AutoPolicy([L2, L8, Q4])
    for _ in range(20):  # B = 8 steps that accept every draft: B = 2 gains as well
        p.observe(L8, 8, 1.0, cold=False, drafted=7)
    assert p.tokens(L2) > 1.9 and p.tokens(L8) > 6
    for _ in range(20):  # then nothing is accepted
        p.observe(L2, 1, 1.0, cold=False, drafted=1)
    # Position 1 now fails; past it, the long run says the block goes through (it always did).
    assert p.acc["spec-linear"].hazards(1)[0] > 0.7 and p.tokens(L2) < 1.2 and p.tokens(L8) < 2.2
    p = AutoPolicy([A, L2, L8, Q4])
    for _ in range(40):  # the long run: half of the first drafts accepted
        p.observe(L2, 1 + _ % 2, 1.0, cold=False, drafted=1)
    for _ in range(10):  # lately: none
        p.observe(L2, 1, 1.0, cold=False, drafted=1)
    lin = p.acc["spec-linear"]
    assert lin.hazards(1)[0] > 0.8
    for _ in range(30):  # while AR runs, what was learnt fades back to the long-run hazard
        p.observe(A, 1, 1.0, cold=False)
    assert lin.hazards(1)[0] == pytest.approx(lin.long_run(1)[0], abs=0.02)
    assert p.tokens(Q4) == pytest.approx(1.875)  # the other family learnt nothing
    p.observe(Q4, 1, 1.0, cold=False, drafted=0)  # a quadratic restart verifies no draft: no evidence
    assert p.tokens(Q4) == pytest.approx(1.875)


def test_a_long_run_tail_does_not_outlive_recent_steps_that_stop_early():
    # The long run (an earlier, copy-like text): drafts that survive 3 positions go to the end.
    a = Acceptance(horizon=15, prior=[0.3, 0.3, 0.3] + [0.02] * 12)
    assert a.expected_tokens(16) > a.expected_tokens(4) + 3
    for i in range(12):  # lately (prose): every step stops within 4 drafts
        a.step(0.85, drafted=15, accepted=[0, 1, 2, 3, 1, 2][i % 6])
    # Past position 4, which no recent step passed, the tail takes position 4's recent hazard:
    # B = 16 is worth about what B = 4 is, not the ~1.5 extra tokens the long-run tail would add.
    assert a.expected_tokens(16) < a.expected_tokens(4) + 0.25
    a.step(0.85, drafted=15, accepted=15)  # one step through the whole block brings the tail back
    assert a.expected_tokens(16) > a.expected_tokens(4) + 1.5


def test_policy_measures_each_candidate_then_picks_the_highest_rate():
    p = AutoPolicy([A, L2, L8])
    seen = []
    for _ in range(3 * p.costs.MEASURE):
        k = p.choose()
        seen.append(k)
        p.observe(k, 1 if k == A else k[1], {A: 1.0, L2: 1.5, L8: 2.0}[k], cold=False, drafted=k[1] - 1)
    assert seen == [A] * p.costs.MEASURE + [L2] * p.costs.MEASURE + [L8] * p.costs.MEASURE
    assert p.choose() == L8  # everything accepted: 8 tokens in 2 s beats 2 in 1.5 s and AR's 1 in 1 s


def test_policy_ignores_cold_steps_and_keeps_hysteresis_into_quadratic():
    p = AutoPolicy([A, L2])
    p.observe(A, 1, 50.0, cold=True)  # a compile or graph capture: not a cost
    assert p.costs.cost[A].measured == 0
    Q2 = ("spec-quadratic", 2)
    for other in (Q2, L2):
        p = costed([A, other], [1.0, 1.6])  # at the prior: 1.5 tokens / 1.6 s < AR's 1 tok/s
        p.current, p.steps = A, 1
        assert p.choose() == A
        held = False
        for _ in range(10):  # acceptance goes up step by step
            p.observe(other, 2, 1.6, cold=False, drafted=1)
            r = p.rate(other) / p.rate(A)
            # Entering quadratic restarts from one token: only for a clear gain. Other switches are free.
            bar = p.HYSTERESIS if other == Q2 else 1.0
            held |= 1 < r < bar
            assert p.choose() == (other if r >= bar else A)
            if r >= bar:
                break
        assert p.current == other and held == (other == Q2)


def test_policy_explores_the_other_family_within_its_time_share():
    p = costed([A, L2, Q4], [1.0, 10.0, 10.0])  # AR best; L2 could reach 2 / 10 s: never worth it
    assert [p.choose() for _ in range(3 * p.explore.EVERY)] == [A] * 3 * p.explore.EVERY
    cost = {A: 1.0, L2: 1.6, L4: 2.0, Q4: 3.5}  # AR best at the prior, but L2, L4 and Q4 could win
    p = costed(list(cost), list(cost.values()))
    picks = []
    for _ in range(24 * p.explore.EVERY):
        k = p.choose()
        picks.append((k, p.explore.key is not None))
        restart = k == Q4 and p.explore.left == 1  # the first quadratic step after AR verifies nothing
        p.observe(k, 1, cost[k], cold=False, drafted=0 if restart else k[1] - 1)  # nothing accepted
    assert all(k == A for k, e in picks if not e)
    runs, i = [], 0  # explorations: (first step, keys)
    while i < len(picks):
        if picks[i][1]:
            j = i
            while j < len(picks) and picks[j][1]:
                j += 1
            runs.append((i, [k for k, _ in picks[i:j]]))
            i = j
        else:
            i += 1
    # At the first step (AR best on another text's prior: probe a family) and every EVERY steps.
    assert runs[0][0] == 0 and all((i + 1) % p.explore.EVERY == 0 for i, _ in runs[1:])
    # The families take turns, each with its cheapest candidate that could win (linear: B = 2, not B = 4
    # with nothing accepted), and quadratic for two steps (its first from AR only restarts).
    assert [keys for _, keys in runs[:2]] == [[L2], [Q4, Q4]]
    assert all(keys in ([L2], [Q4, Q4]) for _, keys in runs)
    assert p.explore.spent <= p.explore.share() * p.explore.seconds + 2 * max(cost.values())  # the cap, up to one exploration
    # No exploration beat AR: the share they may lose shrinks, so they thin out.
    assert p.explore.tries >= 2 and p.explore.hits == 0 and p.explore.share() < p.explore.SHARE / 3
    half = len(picks) // 2
    assert sum(e for _, e in picks[half:]) < sum(e for _, e in picks[:half])


def test_exploration_outcomes_carry_over_and_gate_the_first_step_probe(tmp_path, monkeypatch):
    """Where explorations have kept missing on this device (AR wins outright), a generation that
    starts in AR no longer probes a family at its first step; one whose earlier explorations paid
    still does. The outcomes go through the profile, weighed down each generation."""
    from trikern.kernels import autotune_store

    monkeypatch.setattr(autotune_store, "shipped_dirs", lambda: [])
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    cost = {A: 1.0, L2: 1.6, L4: 2.0}  # AR best at the prior; L2 and L4 could win

    def first_pick(prior):
        p = costed(list(cost), list(cost.values()))
        p.explore = Exploration(prior)
        return p.choose()

    assert first_pick(None) != A  # no history: probe
    assert first_pick((0.0, 10.0)) == A  # ten misses: no probe
    assert first_pick((5.0, 10.0)) != A  # half of them paid: probe
    m = random_model(tiny_config(), seed=3)
    prof = StepProfile(m, 64)
    p = AutoPolicy(list(cost), prof)
    p.explore.hits, p.explore.tries = 1, 3
    p.finish()
    assert StepProfile(m, 64).get_exploration() == (1.0, 3.0, 1.0)
    q = AutoPolicy(list(cost), StepProfile(m, 64))
    assert (q.explore.prior_hits, q.explore.prior_tries) == (1.0, 3.0)
    q.explore.tries = 2
    q.finish()
    assert StepProfile(m, 64).get_exploration() == pytest.approx((1.0 * p.KEEP_EXPLORED, 3.0 * p.KEEP_EXPLORED + 2, 1.0))


def test_first_step_probes_come_as_often_as_explorations_paid(tmp_path, monkeypatch):
    """A generation that starts in AR probes at its first step as often as explorations have paid on
    this device: at a hit rate of 0.4, 4 starts in 10 after the first (the credit that schedules them
    goes through the profile), not every one (each probe cost a short generation ~3% where AR wins outright)."""
    from trikern.kernels import autotune_store

    monkeypatch.setattr(autotune_store, "shipped_dirs", lambda: [])
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    cost = {A: 1.0, L2: 1.6, L4: 2.0}
    m = random_model(tiny_config(), seed=3)
    prof = StepProfile(m, 64)
    prof.update({}, {}, exploration=(3.8, 10.0))  # (3.8 + 1) / (10 + 2): a hit rate of 0.4
    probes = []
    for _ in range(10):
        p = AutoPolicy(list(cost), StepProfile(m, 64))
        for k, sec in cost.items():
            p.costs.cost[k].seconds, p.costs.cost[k].measured = sec, p.costs.MEASURE
        p.explore.prior_hits, p.explore.prior_tries = 3.8, 10.0  # what earlier starts' outcomes would move
        probes.append(p.choose() != A)
        p.explore.hits = p.explore.tries = 0
        p.finish()
    # No stored credit: the first start probes; then 0.4 a start, 4 probes in the next 9 starts.
    assert probes[0] and sum(probes[1:]) == 4, probes


def test_a_clear_ar_win_is_held_without_judging_every_step(monkeypatch):
    """Where AR beats every speculative candidate by HOLD_MARGIN, now and in the long run, the policy
    keeps it for up to HOLD steps without running its choice (tens of microseconds of Python a step,
    measurable against a 3 ms AR step) and judges again before every refresh: the same choices as a
    policy that judges every step, far fewer judgements."""
    import trikern.decode.auto.policy as policy_module

    calls = []
    real_best = policy_module.best
    monkeypatch.setattr(policy_module, "best", lambda *a: calls.append(1) or real_best(*a))
    cost = {A: 1.0, L2: 1.6, L4: 2.0}  # AR best at the prior; L2 and L4 could win a whole block

    def run(hold):
        p = costed(list(cost), list(cost.values()))
        p.HOLD = hold
        picks = []
        for _ in range(6 * p.explore.EVERY):
            k = p.choose()
            picks.append(k)
            p.observe(k, 1, cost[k], cold=False, drafted=k[1] - 1 if k != A else 0)  # drafts all rejected
        return picks

    judged = run(0)
    every, calls[:] = len(calls), []
    held = run(policy_module.AutoPolicy.HOLD)
    assert held == judged and A in held and any(k != A for k in held)
    assert len(calls) < every / 3, (len(calls), every)


def test_explorations_that_pay_keep_their_share():
    def explored(tokens):  # one exploration step of L4 (2 s) that displaced AR (1 token a second)
        p.explore.key, p.explore.displaced = L4, 1.0
        p.observe(L4, tokens, 2.0, cold=False, drafted=3)

    p = costed([A, L4], [1.0, 2.0])
    assert p.explore.share() == p.explore.SHARE / 2  # before any: half
    for _ in range(3):
        explored(4)  # 4 tokens in 2 s: a hit
    assert (p.explore.hits, p.explore.tries) == (3, 3) and p.explore.share() == pytest.approx(0.8 * p.explore.SHARE)
    for _ in range(5):
        explored(1)  # 1 token in 2 s: a miss
    assert (p.explore.hits, p.explore.tries) == (3, 8) and p.explore.share() == pytest.approx(0.4 * p.explore.SHARE)


def test_a_step_that_fills_its_block_is_followed_by_a_larger_block():
    p = costed([A, L4, L16], [1.0, 2.0, 2.5])
    p.acc["spec-linear"] = Acceptance(15, prior=[0.1] * 3 + [0.9] * 12)  # the long run: text stops after 3
    assert p.choose() == L4 and p.explore.key is None
    p.observe(L4, 4, 2.0, cold=False, drafted=3)  # every draft accepted: nothing known past the block
    assert p.choose() == L16 and p.explore.key == L16  # at once, not at the next periodic refresh
    p.observe(L16, 5, 2.5, cold=False, drafted=15)  # it ran on for one more token, not to the end
    assert p.choose() == L4 and p.explore.key is None  # a step that stopped inside its block: no exploring
    p.observe(L4, 4, 2.0, cold=False, drafted=3)
    assert p.choose() == L16 and p.explore.key == L16
    for _ in range(2):
        p.observe(L16, 16, 2.5, cold=False, drafted=15)  # copy-like text: the whole block, twice
    assert p.choose() == L16 and p.explore.key is None  # it now wins on its own estimate
    assert p.explore.spent == 0  # those explorations produced at least what L4 would have in their time


def test_a_filled_block_grows_into_a_steady_step_but_not_from_one_quadratic_draft():
    """A filled block is followed by the next size up, in the family whose first step is a steady one
    where there is such (growing a quadratic block first verifies the old, shallower draft), even
    where the other costs less. But a filled quadratic B = 2 block (one draft) sets off no growth: its
    growth to linear B = 4 came back into quadratic through a one-token restart, cycle after cycle, on
    code prompts. A filled quadratic B = 4 block still grows."""
    Q2, Q8 = ("spec-quadratic", 2), ("spec-quadratic", 8)
    p = costed([A, Q2, L4, Q4], [1.0, 1.2, 2.0, 1.6])
    p.acc["spec-quadratic"] = Acceptance(15, prior=[0.1] + [0.9] * 14)
    p.acc["spec-linear"] = Acceptance(15, prior=[0.9] * 15)
    assert p.choose() == Q2
    p.observe(Q2, 2, 1.2, cold=False, drafted=1)  # filled, one draft
    assert p.choose() == Q2 and p.explore.key is None
    q = costed([A, L2, L4, Q4], [1.0, 1.1, 2.0, 1.6])
    q.acc["spec-linear"] = Acceptance(15, prior=[0.1] + [0.9] * 14)
    q.acc["spec-quadratic"] = Acceptance(15, prior=[0.9] * 15)
    assert q.choose() == L2
    q.observe(L2, 2, 1.1, cold=False, drafted=1)  # filled: Q4 would restart, L4 is steady
    assert q.choose() == L4
    r = costed([A, Q4, L8, Q8], [1.0, 1.6, 2.6, 2.4])
    r.acc["spec-quadratic"] = Acceptance(15, prior=[0.05] * 3 + [0.9] * 12)
    r.acc["spec-linear"] = Acceptance(15, prior=[0.9] * 15)
    assert r.choose() == Q4
    r.observe(Q4, 4, 1.6, cold=False, drafted=3)  # filled, three drafts
    assert r.choose() == L8 and r.explore.key == L8


def test_a_step_that_grew_a_quadratic_block_is_not_its_cost():
    """The first step at a larger quadratic block verifies the old draft in fewer sub-blocks: cheaper
    than a steady step, so not what the block costs (it priced B = 4 at 4.6 ms against 5.4)."""
    p = costed([A, Q4], [1.0, 3.0])
    p.current = Q4
    p.observe(Q4, 2, 2.0, cold=False, drafted=1)  # grown from B = 2: one draft verified
    assert p.costs.cost[Q4].seconds == 3.0 and not p.restarted
    p.observe(Q4, 2, 3.3, cold=False, drafted=3)  # a steady step counts
    assert p.costs.cost[Q4].seconds != 3.0


def test_a_quadratic_restart_is_not_a_cost_and_is_followed_by_the_step_it_paid_for():
    p = costed([A, Q4], [1.0, 3.0])  # AR is best: Q4 expects 1.875 tokens per 3 s
    p.current = Q4  # as if a switch had just entered quadratic
    p.observe(Q4, 1, 0.5, cold=False, drafted=0)  # the one-token restart: B + 1 rows, cheap
    assert p.costs.cost[Q4].seconds == 3.0 and p.restarted
    assert p.choose() == Q4  # the step with drafts comes next, whatever the estimates say
    p.observe(Q4, 1, 3.0, cold=False, drafted=3)
    assert not p.restarted and p.choose() == A


def test_exploring_costs_its_regret_not_its_time():
    # AR at 1 s per token; L4 at 2 s per step. An exploration that yields 2 tokens loses nothing
    # against AR and does not use up the share; one that yields 1 token loses 1 s.
    for tokens, lost in ((2, 0.0), (1, 1.0)):
        p = costed([A, L4], [1.0, 2.0])
        while True:
            k = p.choose()
            if p.explore.key is not None:
                break
            p.observe(k, 1, 1.0, cold=False)
        p.observe(k, tokens, 2.0, cold=False, drafted=3)
        assert p.explore.spent == pytest.approx(lost)
    p = costed([A, L4], [1.0, 2.0])
    while p.choose() != L4:
        p.observe(A, 1, 1.0, cold=False)
    p.observe(L4, 1, 30.0, cold=True, drafted=3)  # a cold exploration (timing, capture): not counted
    assert p.explore.spent == 0


def test_a_step_that_times_cpu_matmul_paths_is_cold(monkeypatch):
    from trikern.decode import GenerationConfig, drive, new_context, policy_for
    from trikern.kernels.cpu import linear as cpu_linear

    monkeypatch.delenv("TRIKERN_CPU_LINEAR", raising=False)
    monkeypatch.setattr(cpu_linear, "_choices", {})
    m = random_model(tiny_config(), seed=4, dtype=torch.bfloat16, backend="cpu")
    prompt = torch.arange(1, 10)  # 9 tokens: the prefill times the 16-row bucket, the steps the 4-row one
    steps = []
    ctx = new_context(m, GenerationConfig(max_new_tokens=12, block_size=4), len(prompt), "spec-linear")
    for _ in drive(ctx, prompt, policy_for(ctx, "spec-linear"), on_step=lambda k, t, s, cold: steps.append(cold)):
        pass
    assert len(steps) >= 2 and steps[0] and not any(steps[1:])


def test_acceptance_prior_moves_halfway_per_generation(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    m = random_model(tiny_config(), seed=3)
    StepProfile(m, 3).update({}, {"spec-linear": [0.2, 0.4, 0.6]})
    assert StepProfile(m, 3).get_acceptance("spec-linear") == pytest.approx([0.2, 0.4, 0.6])  # the first: as it is
    StepProfile(m, 3).update({}, {"spec-linear": [0.6, 0.0]})  # a shorter generation
    assert StepProfile(m, 3).get_acceptance("spec-linear") == pytest.approx([0.4, 0.2, 0.6])


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
    hazards = StepProfile(m, 3).get_acceptance("spec-linear")  # what its acceptance ended with
    assert hazards and all(0 <= h <= 1 for h in hazards)
    policy = AutoPolicy(candidates("auto", 4, m.cfg), StepProfile(m, 3))
    # This model's steps take a fraction of a millisecond: a hiccup can leave a stored cost out of the
    # order of work, which the next generation then measures again instead of trusting.
    assert len(policy.costs.distrusted) <= 1
    assert all(c.measured for k, c in policy.costs.cost.items() if k not in policy.costs.distrusted)
    assert policy.acc["spec-linear"].long_run() == pytest.approx(hazards, abs=1e-3)  # the prior
    best = max(policy.keys, key=policy.rate)
    assert policy.first() == best
    # No measuring needed: the best, or (AR best) the first step's probe of a speculative family.
    assert policy.costs.distrusted or policy.choose() == best or policy.explore.key is not None


def test_the_profile_has_its_own_switch(tmp_path, monkeypatch):
    """TRIKERN_DECODE_PROFILE=0 keeps auto from reading or saving a profile; TRIKERN_AUTOTUNE=0 (kernel
    tuning) leaves the profile on."""
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    m = random_model(tiny_config(), seed=3)
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    assert not StepProfile.enabled()
    run(m, [1, 2, 3], "auto", max_new_tokens=40, block_size=4)
    assert not list(Path(tmp_path).rglob("decode-steps-*.json"))
    monkeypatch.delenv("TRIKERN_DECODE_PROFILE")
    monkeypatch.setenv("TRIKERN_AUTOTUNE", "0")
    assert StepProfile.enabled()
    run(m, [1, 2, 3], "auto", max_new_tokens=40, block_size=4)
    assert len(list(Path(tmp_path).rglob("decode-steps-*.json"))) == 1


def test_measure_writes_every_candidate(tmp_path, monkeypatch):
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    m = random_model(tiny_config(), seed=3)
    lines = []
    prof = measure(m, cache_lengths=(16, 64), steps=2, block_size=2, log=lines.append)
    assert len(lines) == 2 * len(candidates("auto", 2, m.cfg))
    saved = json.loads(next(Path(tmp_path).rglob("decode-steps-*.json")).read_text())["results"]
    assert set(saved) == {f"{mode}/{b}/256" for mode, b in candidates("auto", 2, m.cfg)}  # smallest bucket
    assert all(prof.get(key)["seconds"] > 0 for key in candidates("auto", 2, m.cfg))


def test_measure_times_steps_that_follow_their_own_kind(tmp_path, monkeypatch):
    """The candidates take turns, but a step right after another candidate's runs on caches holding
    that one's data (an AR step timed so was 25% dearer than in a generation): only a turn's second
    step is timed. Here a step that follows another candidate's reports 100 s."""
    import trikern.decode.auto.tuning as tuning

    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    last = []
    real_drive = tuning.drive

    def drive(ctx, prompt, policy, on_step):
        def hook(k, t, s, cold):
            after_other = bool(last) and last[-1] != k
            last.append(k)
            return on_step(k, t, 100.0 if after_other else s, cold)
        return real_drive(ctx, prompt, policy, on_step=hook)

    monkeypatch.setattr(tuning, "drive", drive)
    m = random_model(tiny_config(), seed=3)
    prof = measure(m, cache_lengths=(16,), steps=2, block_size=2, log=lambda *a: None)
    assert all(0 < prof.get(k)["seconds"] < 100 for k in candidates("auto", 2, m.cfg))


def test_a_slow_spell_moves_the_speed_not_the_running_candidates_cost():
    p = costed([A, L2], [1.0, 1.2])
    for _ in range(5):
        p.observe(L2, 2, 1.2, cold=False, drafted=1)  # L2 accepts: 1.8 tokens / 1.2 s beats AR
    assert p.choose() == L2
    for _ in range(10):  # the machine slows down 3x while L2 runs (accepting as before)
        p.observe(L2, 2, 3.6, cold=False, drafted=1)
    assert p.costs.speed > 2.5  # (the first steps, before the speed caught up, leak a little into the cost)
    assert p.costs.cost[L2].seconds < 1.2 * 1.2 and p.choose() == L2  # a plain running average would say 3.6


def test_a_confirmed_cost_takes_its_live_figure_on_the_profiles_scale():
    """A stored cost that is off by less than TRUST (a profile measured under load: each candidate off
    by its own factor) is not overturned, but its first live steps set it, on the profile's scale."""
    from trikern.decode.auto.costs import CostModel
    cm = CostModel([A, L4, Q4], {A: 1.0, L4: 2.0, Q4: 4.0})
    for k, live in ((A, 1.0), (L4, 2.0), (Q4, 5.0)):  # the machine at the profile's speed; Q4 was 25% low
        for _ in range(CostModel.CONFIRM):
            cm.observe(k, live)
    assert (cm.seconds(A), cm.seconds(L4)) == (1.0, 2.0)
    assert cm.seconds(Q4) == pytest.approx(5.0) and Q4 not in cm.overturned
