"""`mode="auto"`'s policy replayed on recorded generations: does it pick well, before timing noise?

tests/data/acceptance_traces.json holds, for each shipped bench prompt, how many tokens a step of
each (mode, block size) produces from every position of the embedded model's greedy output, and
the step costs measured on this project's CPU (record_acceptance.py there). Greedy decoding makes
both independent of the schedule, so any policy replays exactly: tokens from the traces, seconds
from the costs. The real AutoPolicy and StepProfile run it, three rounds over the prompts as
`trikern bench --repeats 3` runs them (the acceptance prior carried between generations). The
benchmarks measure the same on real steps (README, Results); this checks the decisions alone.
"""
import json
from pathlib import Path

import pytest

import trikern
from trikern.decode.policy import AutoPolicy, FixedPolicy, candidates
from trikern.decode.profile import StepProfile
from trikern.kernels import autotune

DATA = json.loads((Path(__file__).parent / "data" / "acceptance_traces.json").read_text())
COSTS = {(k.split("/")[0], int(k.split("/")[1])): ms / 1e3 for k, ms in DATA["step_ms"].items()}
QUAD = "spec-quadratic"


def replay(policy, trace) -> tuple[int, float]:
    """(tokens, seconds) of one generation of `trace` under `policy`; the first token is the prefill's.
    Two approximations: a quadratic restart (B + 1 rows) costs what a B = 2 step (6 rows) does, and a
    switch to a larger quadratic block verifies as many drafts as that block would have drafted."""
    n = len(trace["spec-linear"]["2"]) + 1
    first = policy.first()  # its prefill: a quadratic one drafts the first block
    made, seconds, drafts_for = 1, 0.0, first[1] if first[0] == QUAD else 0
    while made < n:
        key = policy.choose()
        mode, B = key
        if mode == QUAD and not drafts_for:  # entering quadratic: the one-token restart
            tokens, drafted, cost = 1, 0, min(COSTS[key], COSTS[(QUAD, 2)])
        else:
            tokens = 1 if mode == "ar" else trace[mode][str(B)][made - 1]
            drafted, cost = (0 if mode == "ar" else B - 1), COSTS[key]
        drafts_for = B if mode == QUAD else 0
        policy.observe(key, tokens, cost, False, drafted)
        made, seconds = made + tokens, seconds + cost
    policy.finish()
    return n, seconds


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    """tokens/s per prompt kind (all, mixed) of auto and of every fixed candidate, over 3 rounds."""
    with pytest.MonkeyPatch.context() as mp:
        # Only this run's profile: not what this checkout's autotune_cache/ learnt from other runs.
        mp.setattr(autotune, "shipped_dirs", lambda: [])
        mp.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path_factory.mktemp("tune")))
        model = trikern.load().model
        keys = candidates("auto", 16, model.cfg)
        profile = StepProfile(model, 128)
        for key in keys:  # what `trikern tune --decode` measured
            profile.save(key, profile.bucket, COSTS[key], 1.0, 8)
        totals: dict = {}
        for _ in range(3):
            for pid, trace in DATA["traces"].items():
                runs = [("auto", AutoPolicy(keys, StepProfile(model, 128)))]
                runs += [(f"{m}/{B}", FixedPolicy((m, B))) for m, B in keys]
                for name, policy in runs:
                    n, s = replay(policy, trace)
                    for group in ("all", trace["kind"]):
                        t = totals.setdefault(name, {}).setdefault(group, [0, 0.0])
                        t[0], t[1] = t[0] + n, t[1] + s
    return {name: {g: n / s for g, (n, s) in groups.items()} for name, groups in totals.items()}


def test_auto_beats_every_fixed_setting_on_prose_and_code_mixed(rates):
    fixed = {k: v["mixed"] for k, v in rates.items() if k != "auto"}
    best = max(fixed, key=fixed.get)
    # Those prompts' output turns from prose-like to copy-like text: no one setting is best throughout.
    assert rates["auto"]["mixed"] > 1.03 * fixed[best], (rates["auto"]["mixed"], best, fixed[best])


def test_auto_is_near_the_best_and_well_above_the_worst_fixed_setting(rates):
    fixed = {k: v["all"] for k, v in rates.items() if k != "auto"}
    assert rates["auto"]["all"] >= 0.95 * max(fixed.values())
    assert rates["auto"]["all"] >= 1.5 * min(fixed.values())
