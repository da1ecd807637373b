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
import torch

import trikern
from trikern.decode import candidates
from trikern.decode.auto.policy import AutoPolicy, FixedPolicy
from trikern.decode.auto.profile import StepProfile
from trikern.kernels import autotune_store

DATA = json.loads((Path(__file__).parent / "data" / "acceptance_traces.json").read_text())
COSTS = {(k.split("/")[0], int(k.split("/")[1])): ms / 1e3 for k, ms in DATA["step_ms"].items()}
QUAD = "spec-quadratic"
# Step costs (ms) on an AVX2-capped CPU in its default dtype, fp32: `trikern tune --decode --block-size 16
# --cache-lengths 128 --steps 8` under ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2
# ATEN_CPU_CAPABILITY=avx2 OMP_NUM_THREADS=1 (the README's Results say how that stands in for such a CPU).
AVX2_COSTS = {(m, int(B)): ms / 1e3 for (m, B), ms in {
    ("ar", 1): 3.44, ("spec-linear", 2): 10.17, ("spec-linear", 4): 10.28, ("spec-linear", 8): 10.99,
    ("spec-linear", 16): 13.92, (QUAD, 2): 5.85, (QUAD, 4): 8.60, (QUAD, 8): 17.64, (QUAD, 16): 67.69}.items()}

# The same on this project's AMD EPYC VM with AVX-512 BF16 (2026-12-06), bf16, 1 thread, same command.
EPYC_COSTS = {(m, int(B)): ms / 1e3 for (m, B), ms in {
    ("ar", 1): 3.58, ("spec-linear", 2): 6.80, ("spec-linear", 4): 6.79, ("spec-linear", 8): 7.33,
    ("spec-linear", 16): 8.77, (QUAD, 2): 4.20, (QUAD, 4): 5.26, (QUAD, 8): 9.74, (QUAD, 16): 33.74}.items()}

# The same VM on 2026-12-07, after the CPU attention kept its chunk masks (quadratic steps relatively
# cheaper: B = 4 at 0.70x a linear B = 4 step, 0.77x above), bf16, 1 thread, same command.
EPYC_MASKS_COSTS = {(m, int(B)): ms / 1e3 for (m, B), ms in {
    ("ar", 1): 3.88, ("spec-linear", 2): 7.78, ("spec-linear", 4): 7.85, ("spec-linear", 8): 8.74,
    ("spec-linear", 16): 10.56, (QUAD, 2): 4.40, (QUAD, 4): 5.53, (QUAD, 8): 11.40, (QUAD, 16): 35.54}.items()}


def machines():
    """(name, costs): four measured cost sets (three CPUs, the EPYC before and after a change to its
    attention), each as measured and under three seeded +-15% perturbations (a machine the project
    has not seen orders near-tied candidates differently).
    The policy's path through a generation is chaotic in near-ties, so its quality is judged on the
    whole set, not on one machine's figures."""
    for name, costs in (("xeon", COSTS), ("avx2", AVX2_COSTS), ("epyc", EPYC_COSTS), ("epyc-masks", EPYC_MASKS_COSTS)):
        yield name, costs
        for seed in (1, 2, 3):
            g = torch.Generator().manual_seed(seed)
            yield f"{name}~{seed}", {k: v * (0.85 + 0.3 * torch.rand((), generator=g).item()) for k, v in costs.items()}


def traces(kinds=None, tokens=None) -> dict:
    """The recorded traces of prompts of `kinds` (default all), cut to generations of `tokens`."""
    out = {}
    for name, t in DATA["traces"].items():
        if kinds is None or t["kind"] in kinds:
            cut = (tokens or 10**9) - 1
            out[name] = {"kind": t["kind"], **{m: {b: v[:cut] for b, v in t[m].items()} for m in ("spec-linear", QUAD)}}
    return out


def replay(policy, trace, costs=COSTS, slow=lambda: 1.0) -> tuple[int, float]:
    """(tokens, seconds) of one generation of `trace` under `policy`; the first token is the prefill's.
    `costs`: the true step costs; `slow()`: the machine's slowdown at each step (other processes).
    A switch to a larger quadratic block B from A verifies the old draft of A - 1 tokens: it yields
    what a step of A does, at A sub-blocks of B + 1 rows (cost between A's and B's, by rows). (It
    was once replayed as a full step of B, which hid what growing a quadratic block costs.) One
    approximation: a quadratic restart (B + 1 rows) costs what a B = 2 step (6 rows) does."""
    n = len(trace["spec-linear"]["2"]) + 1
    first = policy.first()  # its prefill: a quadratic one drafts the first block
    made, seconds, drafts_for = 1, 0.0, first[1] if first[0] == QUAD else 0
    while made < n:
        key = policy.choose(n - made)  # as the driver tells it: the tokens left to emit
        mode, B = key
        if mode == QUAD and not drafts_for:  # entering quadratic: the one-token restart
            tokens, drafted, cost = 1, 0, min(costs[key], costs[(QUAD, 2)])
        elif mode == QUAD and drafts_for < B:  # growing: the old, shallower draft at B's width
            A = drafts_for
            tokens, drafted = trace[mode][str(A)][made - 1], A - 1
            rows = lambda b: b * (b + 1)  # noqa: E731
            cost = costs[(QUAD, A)] + (costs[key] - costs[(QUAD, A)]) * (A * (B + 1) - rows(A)) / (rows(B) - rows(A))
        else:
            tokens = 1 if mode == "ar" else trace[mode][str(B)][made - 1]
            drafted, cost = (0 if mode == "ar" else B - 1), costs[key]
        cost *= slow()
        drafts_for = B if mode == QUAD else 0
        policy.observe(key, tokens, cost, False, drafted)
        made, seconds = made + tokens, seconds + cost
    policy.finish()
    return n, seconds


def replay_set(model, keys, stored=None, costs=COSTS, slow=lambda: 1.0, rounds=3, prompts=None) -> dict:
    """tokens/s per prompt kind (all, mixed) of auto and of every fixed candidate over `rounds` passes
    of the prompts (`traces()`'s, default all), auto's profile starting from the `stored` costs
    (None: measured on the fly)."""
    profile = StepProfile(model, 128)
    for key, sec in (stored or {}).items():  # what `trikern tune --decode` measured
        profile.save(key, profile.bucket, sec, 1.0, 8)
    totals: dict = {}
    for _ in range(rounds):
        for trace in (prompts or DATA["traces"]).values():
            runs = [("auto", AutoPolicy(keys, StepProfile(model, 128)))]
            runs += [(f"{m}/{B}", FixedPolicy((m, B))) for m, B in keys]
            for name, policy in runs:
                n, s = replay(policy, trace, costs, slow)
                for group in ("all", trace["kind"]):
                    t = totals.setdefault(name, {}).setdefault(group, [0, 0.0])
                    t[0], t[1] = t[0] + n, t[1] + s
    return {name: {g: n / s for g, (n, s) in groups.items()} for name, groups in totals.items()}


@pytest.fixture
def own_profile(tmp_path, monkeypatch):
    """Only this test's profile: not what this checkout's autotune_cache/ learnt from other runs."""
    monkeypatch.setattr(autotune_store, "shipped_dirs", lambda: [])
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))
    model = trikern.load(dtype="bf16").model
    return model, candidates("auto", 16, model.cfg)


@pytest.fixture(scope="module")
def rates(tmp_path_factory):
    """tokens/s per prompt kind (all, mixed) of auto and of every fixed candidate, over 3 rounds."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(autotune_store, "shipped_dirs", lambda: [])
        mp.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path_factory.mktemp("tune")))
        model = trikern.load(dtype="bf16").model
        keys = candidates("auto", 16, model.cfg)
        return replay_set(model, keys, {k: COSTS[k] for k in keys})


def over_machines(model, tmp: Path, group="all", cap=16, **kw) -> dict:
    """machine -> auto's tokens/s over the best fixed setting's on `group`, costs as `trikern tune
    --decode` stored them (each machine's profile in its own folder under `tmp`)."""
    keys = candidates("auto", cap, model.cfg)
    out = {}
    for name, costs in machines():
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp / name))
            rates = replay_set(model, keys, {k: costs[k] for k in keys}, costs, **kw)
        fixed = max(v[group] for k, v in rates.items() if k != "auto")
        out[name] = rates["auto"][group] / fixed
    return out


def test_auto_beats_every_fixed_setting_on_prose_and_code_mixed(own_profile, tmp_path):
    # Those prompts' output turns from prose-like to copy-like text: no one setting is best throughout.
    ratios = over_machines(own_profile[0], tmp_path, "mixed")
    assert sum(ratios.values()) / len(ratios) > 1.03 and min(ratios.values()) > 0.95, ratios


@pytest.mark.parametrize("kinds,tokens,cap", [({"code"}, 64, 16), ({"code"}, 32, 8), (None, 32, 8)],
                         ids=["code 64 tokens", "code 32 tokens", "all 32 tokens"])
def test_auto_holds_on_short_and_code_generations(kinds, tokens, cap, own_profile, tmp_path):
    """Where one setting wins throughout and a generation is short, what auto spends learning the
    text is the whole gap: at least 0.95x the best fixed setting on average over the machines, 0.85x
    at worst (a 32-token generation that locked into AR after a poor first draft was 0.76x)."""
    ratios = over_machines(own_profile[0], tmp_path, cap=cap, prompts=traces(kinds, tokens))
    assert sum(ratios.values()) / len(ratios) >= 0.95 and min(ratios.values()) >= 0.85, ratios


def test_auto_is_near_the_best_and_well_above_the_worst_fixed_setting(rates):
    fixed = {k: v["all"] for k, v in rates.items() if k != "auto"}
    assert rates["auto"]["all"] >= 0.95 * max(fixed.values())
    assert rates["auto"]["all"] >= 1.5 * min(fixed.values())


def near_best(rates, at_least=0.95):
    fixed = {k: v["all"] for k, v in rates.items() if k != "auto"}
    best = max(fixed, key=fixed.get)
    assert rates["auto"]["all"] >= at_least * fixed[best], (rates["auto"]["all"], best, fixed[best])
    assert rates["auto"]["all"] >= 1.5 * min(fixed.values())


@pytest.mark.parametrize("poison", ["ar x100", "all x100", "all x100, ar x1e4", "ar x0.01", "burst"])
def test_a_poisoned_profile_recovers_within_one_generation(poison, own_profile):
    """A profile measured while the machine was busy (as one was: AR at 0.34 s a step, ~100x the
    truth; "burst": the candidates measured first, during a slow spell, 50x). After one generation
    every stored cost is within 2x of the truth (on the profile's own scale), and auto holds over
    the prompt set from there."""
    model, keys = own_profile
    factor = {"ar x100": lambda k: 100.0 if k == ("ar", 1) else 1.0,
              "all x100": lambda k: 100.0,
              "all x100, ar x1e4": lambda k: 1e4 if k == ("ar", 1) else 100.0,  # a uniform scale and an outlier
              "ar x0.01": lambda k: 0.01 if k == ("ar", 1) else 1.0,  # a fast AR step: others look slow
              "burst": lambda k: 50.0 if k[0] == "ar" or k in (("spec-linear", 2), ("spec-linear", 4)) else 1.0,
              }[poison]
    profile = StepProfile(model, 128)
    for key in keys:
        profile.save(key, profile.bucket, COSTS[key] * factor(key), 1.0, 8)
    trace = next(iter(DATA["traces"].values()))
    replay(AutoPolicy(keys, StepProfile(model, 128)), trace)  # one generation
    after = StepProfile(model, 128)
    ratios = {k: after.get(k)["seconds"] / COSTS[k] for k in keys}
    scale = sorted(ratios.values())[len(ratios) // 2]  # stored costs are kept on one scale, any scale
    assert all(0.5 <= r / scale <= 2 for r in ratios.values()), ratios
    near_best(replay_set(model, keys, rounds=1))


def test_auto_holds_without_a_profile_and_under_load_spikes(own_profile):
    """Measured on the fly (no `trikern tune --decode`), on a machine where one step in ten runs 3-6x
    slower (another process): auto stays near the best fixed setting."""
    model, keys = own_profile
    g = torch.Generator().manual_seed(1)
    spikes = lambda: 3 + 3 * torch.rand((), generator=g).item() if torch.rand((), generator=g) < 0.1 else 1.0
    near_best(replay_set(model, keys, slow=spikes, rounds=2))


@pytest.mark.parametrize("tuned", [True, False], ids=["tuned", "on the fly"])
def test_auto_holds_with_an_avx2_cpus_costs(tuned, own_profile):
    """The same decisions on a CPU whose costs order the candidates differently (AR relatively cheap,
    wide quadratic steps dear): auto still at least 0.95x the best fixed setting and 1.5x the worst."""
    model, keys = own_profile
    rates = replay_set(model, keys, AVX2_COSTS if tuned else None, AVX2_COSTS, rounds=2)
    near_best(rates)


def test_persisted_costs_keep_the_profiles_scale_over_many_generations(own_profile):
    """Costs and the machine's speed share one free factor. Replayed with noise (each step +-15%, the
    machine's speed changing between generations), 120 generations once drifted every candidate
    that ran to 0.2-0.3x its cost while those that never ran (quadratic B = 8, 16) kept theirs, which
    then looked 4x too dear (seen on a real profile: 0.4-0.6x after ~120 bench generations).
    Persisted costs now keep the profile's scale: every one within 1.6x of the truth. And they do
    not random-walk apart: stored whole, each generation's live figures (noisy) spread them 1.32x
    (linear B = 4 at 1.11x, B = 8 at 0.93x: their order swapped, as on a real profile after ~80
    bench generations); moved a quarter of the way each time, within 1.15x of one another."""
    import math
    import random
    model, keys = own_profile
    profile = StepProfile(model, 128)
    for key in keys:
        profile.save(key, profile.bucket, EPYC_COSTS[key], 1.0, 8)
    rng, prompts = random.Random(0), list(DATA["traces"].values())
    for gen in range(120):
        speed = rng.uniform(0.8, 1.25)
        replay(AutoPolicy(keys, StepProfile(model, 128)), prompts[gen % len(prompts)], EPYC_COSTS,
               lambda: speed * math.exp(rng.gauss(0, 0.15)))
    after = StepProfile(model, 128)
    ratios = {k: after.get(k)["seconds"] / EPYC_COSTS[k] for k in keys}
    assert all(1 / 1.6 < r < 1.6 for r in ratios.values()), ratios
    assert max(ratios.values()) / min(ratios.values()) < 1.15, ratios
