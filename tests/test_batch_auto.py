"""`mode="auto"` over a batch (trikern/batch/auto.py): each step runs the candidate of the highest
expected aggregate tokens per second for the sequences decoding now, with step costs kept per batch
size; every candidate is lossless, so each sequence's output is still its solo AR run's."""
import pytest
import torch
from test_batch_decode import solo, staggered

from trikern.batch import BatchDecoder
from trikern.batch.auto import AutoBatch
from trikern.decode.auto.costs import CostModel, implausible


@pytest.fixture(scope="module")
def embedded():
    import trikern
    return trikern.load(dtype=torch.float32)


@pytest.fixture
def own_profile(tmp_path, monkeypatch):
    """Only this test's step-cost profile (not what this checkout's autotune_cache/ learnt)."""
    from trikern.kernels import autotune_store

    monkeypatch.setattr(autotune_store, "shipped_dirs", lambda: [])
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))


def test_auto_batch_equals_solo_ar_while_it_switches(embedded, monkeypatch, tmp_path):
    """Greedy fp32, sequences joining and leaving: every sequence equals its solo AR run, and the
    batch ran more than one candidate (measuring them on the fly: no profile)."""
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    m, tok = embedded.model, embedded.tokenizer
    texts = ["The quick brown fox", "Once upon a time", "1, 2, 3, 4,", "Hello", "def add(a, b):"]
    items = [(tok.encode(t), dict(max_new_tokens=n)) for t, n in zip(texts, (40, 9, 30, 24, 3))]
    dec = BatchDecoder(m, max_batch=3, mode="auto", block_size=4, prefill_chunk=5)
    seqs, sizes = staggered(dec, items, joins=[0, 0, 2, 5, 5])
    for (p, kw), s in zip(items, seqs):
        assert s.tokens == solo(m, p, "ar", None, **kw), (p, kw)
    kinds = dec.step_kind.chosen
    assert len({k for _, k in kinds}) >= 3, kinds  # measured several candidates
    assert len({n for n, _ in kinds}) >= 2, kinds  # at several batch sizes
    assert any(k[0] == "spec-quadratic" for _, k in kinds), kinds  # entered quadratic (restart) mid-batch


def test_the_choice_follows_the_batch_size(embedded, monkeypatch):
    """Costs where a wide speculative step wins alone and AR wins for four chains: auto runs the
    speculative step at batch size 1 and AR at batch size 4 (acceptance as measured)."""
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    dec = BatchDecoder(embedded.model, max_batch=4, mode="auto", block_size=4)
    auto = dec.step_kind
    one = {k: (1e-3 if k[0] == "ar" else 2e-3) for k in auto.keys}
    four = {k: (1.2e-3 if k[0] == "ar" else 8e-3) for k in auto.keys}
    auto.costs = {1: CostModel(auto.keys, one), 4: CostModel(auto.keys, four)}
    for cm in auto.costs.values():
        cm.ratios = {k: 1.0 for k in auto.keys}  # confirmed: nothing left to check
    seqs = [dec.add([1, 2, 3], max_new_tokens=5) for _ in range(4)]
    for s in seqs:
        for a in auto.acceptance(s).values():
            for _ in range(20):
                a.step(1.0, 3, 3)  # every draft accepted lately: a B=4 step yields ~4 tokens
    assert auto.choose(seqs[:1], [])[0] != "ar"
    auto.current = None
    assert auto.choose(seqs, []) == ("ar", 1)
    # A step with prefill pieces never runs QUADRATIC (it cannot carry a causal chunk).
    assert all(auto.choose(seqs[:1], [(seqs[1], 3)])[0] != "spec-quadratic" for _ in range(20))


def four_in_ar(model, costs: dict, room: int, accepted=lambda i: 3, waiting: int = 0):
    """(auto, its four decoding sequences): a batch in AR at confirmed step costs (`costs`, by key;
    AR 1 ms, others 8 ms unless given) whose sequence i lately had `accepted(i)` of 3 drafts accepted
    at every step, `room` tokens to go, and `waiting` more requests queued behind it."""
    dec = BatchDecoder(model, max_batch=4, mode="auto", block_size=4)
    auto = dec.step_kind
    costs = {k: costs.get(k, 1e-3 if k[0] == "ar" else 8e-3) for k in auto.keys}
    auto.costs = {4: CostModel(auto.keys, costs)}
    auto.costs[4].ratios = {k: 1.0 for k in auto.keys}  # confirmed: nothing left to check
    seqs = [dec.add([1, 2, 3], max_new_tokens=room) for _ in range(4 + waiting)]
    for i, seq in enumerate(seqs[:4]):
        for a in auto.acceptance(seq).values():
            for _ in range(20):
                a.step(1.0, 3, accepted(i))
    del dec.queue[:4]  # the four decode (choose is called directly, without admitting them)
    auto.current = ("ar", 1)
    return auto, seqs[:4]


def test_entering_quadratic_pays_its_restart_only_with_room_left(embedded, monkeypatch):
    """Entering spec-quadratic restarts every sequence (a step of one token each), so a batch in AR
    switches to a quadratic block that beats AR by half (every draft accepted lately) only while the
    sequences have room to pay that step back: with 64 tokens to go it switches, with 3 it stays
    (entering there, at the end of a batch's sequences, cost ~4% of the aggregate at 4 users).
    Requests wait (the summed rate, `step_rate`) and when none does (`drain_rate`) alike."""
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    quad = {("spec-quadratic", 2): 2e-3, ("spec-quadratic", 4): 2.5e-3}
    for waiting in (1, 0):
        picks = {}
        for room in (64, 3):
            auto, seqs = four_in_ar(embedded.model, quad, room, waiting=waiting)
            picks[room] = auto.choose(seqs, [])
        assert picks == {64: ("spec-quadratic", 4), 3: ("ar", 1)}, (waiting, picks)


def test_a_draining_batch_is_judged_by_when_its_last_sequence_ends(embedded, monkeypatch):
    """Two sequences whose drafts are all accepted and two whose drafts all fail: linear B = 4 gives
    the four more tokens a step for its cost than AR does, summed, but AR's batch ends sooner (the
    linear one puts two sequences far ahead, and the two left behind then take a linear step for one
    token each). With no request waiting auto runs AR; with one queued (a region freed early is
    filled at once), in the decoder or in a server's queue, it runs the summed choice, linear B = 4."""
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    linear = {("spec-linear", 2): 2.3e-3, ("spec-linear", 4): 2.4e-3}
    picks = {}
    for waiting in (0, 1):
        auto, seqs = four_in_ar(embedded.model, linear, 64, accepted=lambda i: 3 if i < 2 else 0, waiting=waiting)
        assert auto.tokens(seqs, ("spec-linear", 4)) / linear[("spec-linear", 4)] > 4 / 1e-3
        picks[waiting] = auto.choose(seqs, [])
    # A request waiting in the caller's queue (trikern serve admits one only when a region is free)
    # counts as one in the decoder's.
    auto, seqs = four_in_ar(embedded.model, linear, 64, accepted=lambda i: 3 if i < 2 else 0)
    auto.dec.waiting_elsewhere = 1
    picks["elsewhere"] = auto.choose(seqs, [])
    assert picks == {0: ("ar", 1), 1: ("spec-linear", 4), "elsewhere": ("spec-linear", 4)}, picks


def test_batch_step_costs_are_measured_stored_and_interpolated(embedded, own_profile):
    """`measure_batch` (`trikern tune --decode --batch-sizes`) stores every candidate's cost at each
    batch size beside the one-sequence entries; batched auto starts each batch size from them:
    measured where measured, linear in n between, along the last segment past the largest."""
    from trikern.decode import candidates
    from trikern.decode.auto.profile import StepProfile
    from trikern.decode.auto.tuning import measure_batch
    import trikern.batch as batch

    m = embedded.model
    keys = candidates("auto", 2, m.cfg)
    lines, regions = [], []
    made = batch.BatchDecoder.__init__

    def spy(self, *a, **kw):  # the regions it allocates: what its steps need, not the model's context
        made(self, *a, **kw)
        regions.append(self.cache.region)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(batch.BatchDecoder, "__init__", spy)
        measure_batch(m, (2, 4), cache_length=16, steps=2, block_size=2, log=lines.append)
    assert len(lines) == 2 * len(keys)
    assert len(regions) == 2 * len(keys) and max(regions) < m.cfg.max_position_embeddings / 2, regions
    prof = StepProfile(m, 16)
    assert all(set(prof.batch_seconds(k)) == {2, 4} for k in keys)  # no one-sequence entry was written
    assert all(prof.get(k) is None for k in keys)
    dec = BatchDecoder(m, max_batch=8, mode="auto", block_size=2)
    auto = dec.step_kind
    # The priors at 3 sequences: the interpolated costs, less any that break the order of work by
    # CostModel's rule (timings on a busy machine can: that rule, not this test, decides).
    cm = auto.cost_model(3)
    assert cm.distrusted == implausible(auto.measured_at(3))
    for k in keys:
        two, four = prof.batch_seconds(k)[2], prof.batch_seconds(k)[4]
        assert auto.measured_at(2)[k] == two and auto.measured_at(4)[k] == four
        assert auto.measured_at(3)[k] == pytest.approx((two + four) / 2)
        assert auto.measured_at(6)[k] == pytest.approx(max(four + (four - two), min(two, four)))
        assert k not in auto.measured_at(1)  # below the smallest measured size: measured live
        if k not in cm.distrusted:
            assert cm.cost[k].seconds == pytest.approx((two + four) / 2)


def test_the_tune_times_a_candidates_steady_steps(embedded, own_profile, monkeypatch):
    """A step right after another candidate's is dearer than the ones that follow their own kind,
    AR's most (on a 2-core Xeon, bf16, at 1, 4 and 8 sequences: 1.16-1.33x its steady cost as a
    turn's second step, 1.06-1.13x as its third, steady from the fourth), and a generation's steps mostly follow their own kind. On
    a clock where each decoder's first three steps in a row cost double, the tune stores every
    candidate's steady cost (timing a turn's second step put AR at 0.62-0.75x a quadratic B = 2
    step at 4 sequences, against 0.56x between steady steps in place)."""
    import types

    import trikern.batch as batch
    from trikern.decode import candidates
    from trikern.decode.auto import tuning
    from trikern.decode.auto.profile import StepProfile

    clock, last = [0.0], [None, 0]  # fake seconds; the decoder that stepped last, its steps in a row
    step = batch.BatchDecoder.step

    def timed_step(self, *a, **kw):
        out = step(self, *a, **kw)
        last[1] = last[1] + 1 if last[0] is self else 1
        last[0] = self
        clock[0] += (2.0 if last[1] <= 3 else 1.0) * 1e-3 * self.max_batch
        return out
    monkeypatch.setattr(batch.BatchDecoder, "step", timed_step)
    monkeypatch.setattr(tuning, "time", types.SimpleNamespace(perf_counter=lambda: clock[0]))
    m = embedded.model
    tuning.measure_batch(m, (2, 3), cache_length=16, steps=2, block_size=2, log=lambda *a: None)
    prof = StepProfile(m, 16)
    for k in candidates("auto", 2, m.cfg):
        assert prof.batch_seconds(k) == pytest.approx({2: 2e-3, 3: 3e-3}), k


def test_a_tune_replaces_the_stored_costs_at_other_batch_sizes(embedded, own_profile):
    """`trikern tune --decode --batch-sizes 2,4` (replace=True) leaves a candidate no stored cost at
    other batch sizes or buckets, which a drain may have persisted before a code change (AR at 3
    sequences stayed 5.2 ms beside 4.4 retuned at 2 and 4); 3 then interpolates. A warm-up measuring
    the sizes a profile lacks (replace=False) keeps them."""
    from trikern.decode import candidates
    from trikern.decode.auto.profile import StepProfile
    from trikern.decode.auto.tuning import measure_batch

    m = embedded.model
    keys = candidates("auto", 2, m.cfg)
    for replace in (False, True):
        prof = StepProfile(m, 16)
        for k in keys:
            prof.save(k, prof.bucket, 1.0, 1.0, 2, batch=3)
            prof.save(k, 4 * prof.bucket, 1.0, 1.0, 2, batch=8)
        prof.save(keys[0], prof.bucket, 0.5, 1.0, 2)  # one sequence's: not a batch entry
        measure_batch(m, (2, 4), cache_length=16, steps=1, block_size=2, log=lambda *a: None, replace=replace)
        prof = StepProfile(m, 16)
        for k in keys:
            assert set(prof.batch_seconds(k)) == ({1, 2, 4} if k == keys[0] else {2, 4}) | (set() if replace else {3, 8})
        assert prof.get(keys[0])["seconds"] == 0.5
        auto = BatchDecoder(m, max_batch=4, mode="auto", block_size=2).step_kind
        three = auto.measured_at(3)[keys[0]]
        assert (three == 1.0) != replace
        if replace:
            assert three == pytest.approx((prof.batch_seconds(keys[0])[2] + prof.batch_seconds(keys[0])[4]) / 2)


def test_the_choice_follows_the_stored_costs_per_batch_size(embedded, own_profile):
    """From a profile alone (no live step yet): where AR's cost barely grows with the batch and a
    speculative step's grows with its rows, auto runs the speculative step for one sequence and AR
    for four. Without batch sizes in the profile it scaled one sequence's costs and ran the
    speculative step at four too (the bug this guards: 0.84x the best fixed setting at 8 users)."""
    from trikern.decode.auto.profile import StepProfile
    m = embedded.model
    dec = BatchDecoder(m, max_batch=4, mode="auto", block_size=4)
    prof = StepProfile(m, 0)
    for k in dec.step_kind.keys:
        spec = k[0] != "ar"
        prof.save(k, prof.bucket, 2e-3 if spec else 1e-3, 1.0, 4)
        prof.save(k, prof.bucket, 8e-3 if spec else 1.2e-3, 1.0, 4, batch=4)
    dec = BatchDecoder(m, max_batch=4, mode="auto", block_size=4)  # reads the profile
    auto = dec.step_kind
    seqs = [dec.add([1, 2, 3], max_new_tokens=5) for _ in range(4)]
    for s in seqs:
        for a in auto.acceptance(s).values():
            for _ in range(20):
                a.step(1.0, 3, 3)  # every draft accepted lately: a B = 4 step yields ~4 tokens
    for n in (1, 4):
        for cm in (auto.cost_model(n),):
            cm.ratios = {k: 1.0 for k in auto.keys}  # confirmed: nothing left to check
    assert auto.choose(seqs[:1], [])[0] != "ar"
    auto.current = None
    assert auto.choose(seqs, []) == ("ar", 1)


def test_a_refused_cost_keeps_the_batch_sizes_entries(embedded, own_profile):
    from trikern.decode.auto.profile import StepProfile
    prof = StepProfile(embedded.model, 0)
    key = ("spec-linear", 4)
    prof.save(key, prof.bucket, 1.0, 1.0, 4)
    prof.save(key, prof.bucket, 2e-3, 1.0, 4, batch=2)
    prof.update({}, {}, drop={key})
    again = StepProfile(embedded.model, 0)
    assert again.get(key) is None and again.batch_seconds(key) == {2: 2e-3}


def test_a_drained_batch_persists_its_live_costs_per_batch_size(embedded, own_profile):
    """What the live steps measured at 2 sequences is in the profile when the batch empties, for the
    next decoder (a server restarted) to start from."""
    from trikern.decode.auto.profile import StepProfile
    m, tok = embedded.model, embedded.tokenizer
    dec = BatchDecoder(m, max_batch=2, mode="auto", block_size=4)
    for text in ("The quick brown fox", "def add(a, b):"):
        dec.add(tok.encode(text), max_new_tokens=48)
    for _ in dec.run():
        pass
    ran = set(dec.step_kind.costs[2].fresh())  # the costs live steps at 2 sequences stand behind
    assert ran, dec.step_kind.chosen
    prof = StepProfile(m, 0)
    assert all(prof.batch_seconds(k).get(2, 0) > 0 for k in ran), {k: prof.batch_seconds(k) for k in ran}
    again = BatchDecoder(m, max_batch=2, mode="auto", block_size=4).step_kind
    assert ran <= set(again.measured_at(2))


def test_a_clear_ar_win_is_held_at_a_batch_size(embedded, monkeypatch):
    """As a solo `auto` (AutoPolicy.hold_steps): where AR beats every speculative candidate clearly
    for the batch, auto keeps it up to HOLD steps without judging (summing every sequence's
    estimates), makes the choices a batch that judges every step makes, and judges again as soon as
    the batch size changes or prefill pieces ride."""
    import trikern.batch.auto as batch_auto

    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    calls = []
    real_best = batch_auto.best
    monkeypatch.setattr(batch_auto, "best", lambda *a: calls.append(1) or real_best(*a))

    def run(hold):
        dec = BatchDecoder(embedded.model, max_batch=4, mode="auto", block_size=4)
        auto = dec.step_kind
        auto.HOLD = hold
        costs = {k: (1e-3 if k[0] == "ar" else 8e-3) for k in auto.keys}  # AR clearly, at any yield
        auto.costs = {4: CostModel(auto.keys, costs)}
        auto.costs[4].ratios = {k: 1.0 for k in auto.keys}  # confirmed: nothing left to check
        seqs = [dec.add([1, 2, 3], max_new_tokens=5) for _ in range(4)]
        picks = []
        for _ in range(5 * auto.explore.EVERY):
            key = auto.choose(seqs, [])
            picks.append(key)
            auto.current = key
            out = {s: [7] for s in seqs}  # one token each: every draft rejected
            auto.observe(key, seqs, out, {s: (0 if key[0] == "ar" else key[1] - 1) for s in seqs}, costs[key], False)
        before = len(calls)
        assert auto.choose(seqs[:3], []) == ("ar", 1) and len(calls) == before + 1  # a new batch size: judged
        return picks

    judged = run(0)
    every, calls[:] = len(calls), []
    held = run(batch_auto.AutoBatch.HOLD)
    assert held == judged and ("ar", 1) in held
    assert len(calls) < every / 3, (len(calls), every)


def test_exploration_outcomes_are_kept_per_batch_size(embedded, own_profile):
    """Whether exploring pays depends on the batch size (at 8 sequences AR wins outright on a CPU
    where one sequence speculates): a drained batch persists its explorations' (hits, tries) per
    batch size, and the next batch at that size starts its budget from them; batch size 1 reads a
    solo generation's outcomes and leaves them to solo generations."""
    from trikern.decode.auto.profile import StepProfile
    m = embedded.model
    prof = StepProfile(m, 0)
    prof.update({}, {}, exploration=(4.0, 5.0))  # a solo generation's
    dec = BatchDecoder(m, max_batch=2, mode="auto", block_size=4)
    auto = dec.step_kind
    one, two = auto.exploration(1), auto.exploration(2)
    assert (one.prior_hits, one.prior_tries) == (4.0, 5.0) and (two.prior_hits, two.prior_tries) == (0.0, 0.0)
    one.hits, one.tries = 1, 3
    two.hits, two.tries = 0, 6
    auto.drained()
    again = StepProfile(m, 0)
    assert again.get_exploration(2)[:2] == (0.0, 6.0) and again.get_exploration(1) == (4.0, 5.0)
    nxt = auto.exploration(2)  # the next batch (the same decoder: a server) starts from the profile
    assert nxt is not two and (nxt.prior_hits, nxt.prior_tries) == (0.0, 6.0)
    assert nxt.share() < two.SHARE / 6  # six misses: a small budget


def test_sequences_that_leave_teach_the_acceptance_prior_pooled(embedded, own_profile):
    """Batched auto moves its own acceptance prior in the profile as solo generations move theirs:
    the sequences that left, their counts pooled into one generation (one blend), so the sequences
    that finish last -- under speculation, those whose drafts fail -- do not weigh more than the
    others; every max_batch leavers (a busy server's batch never drains), and at a drain. The solo
    generations' prior neither starts a batch's sequences nor moves."""
    from trikern.decode.auto.acceptance import Acceptance
    from trikern.decode.auto.profile import StepProfile
    m = embedded.model
    # (a prior behind as many steps as the pool: one blend halfway, as a solo generation's)
    StepProfile(m, 0).update({}, {"spec-linear": [0.5, 0.5, 0.5]}, batched=True, evidence={"spec-linear": 24})
    StepProfile(m, 0).update({}, {"spec-linear": [0.9, 0.9, 0.9]})  # a solo run's
    dec = BatchDecoder(m, max_batch=2, mode="auto", block_size=4)
    auto = dec.step_kind
    a, b = (dec.add([1, 2, 3], max_new_tokens=40) for _ in range(2))
    dec.step()  # both admitted
    good, bad = (auto.acceptance(s)["spec-linear"] for s in (a, b))
    for _ in range(12):
        good.step(1.0, 3, 3)  # every draft accepted
        bad.step(1.0, 3, 0)  # every first draft rejected
    pooled = Acceptance.pooled([good, bad]).long_run()
    assert pooled[1] == pytest.approx((0 + 4 * 0.5) / (12 + 4))  # position 2: only `good` reached it
    assert Acceptance.pooled([bad]).long_run()[0] > 0.85 > 0.6 > pooled[0]
    dec.cancel(a), dec.cancel(b)  # max_batch of them left: the next step teaches
    c = dec.add([4, 5, 6], max_new_tokens=40)
    dec.step()
    again = StepProfile(m, 0).get_acceptance("spec-linear", batched=True)
    assert again == pytest.approx([0.5 + 0.5 * (h - 0.5) for h in pooled], abs=1e-4)  # one blend of the pool
    late = auto.acceptance(c)["spec-linear"]
    assert late.prior == again  # a sequence joining later starts from it
    for _ in range(6):
        late.step(1.0, 3, 3)
    dec.cancel(c)
    auto.drained()  # the last one alone, at the drain
    last = StepProfile(m, 0).get_acceptance("spec-linear", batched=True)
    assert last == pytest.approx([h + 0.5 * (x - h) for h, x in zip(again, late.long_run())], abs=1e-4)
    assert StepProfile(m, 0).get_acceptance("spec-linear") == [0.9, 0.9, 0.9]


def test_a_draining_batch_explores_only_what_the_profile_never_learnt(embedded, own_profile, tmp_path, monkeypatch):
    """A draining batch in AR where linear B = 4 could win if its drafts were accepted: with a fresh
    profile (no acceptance learnt by batches on this machine; solo runs' does not count) or one that
    a few steps taught, it explores the speculative families within the exploration budget; once
    earlier batches taught the profile their acceptance (TAUGHT sequence-steps) it explores nothing
    that its estimates put clearly behind AR (such steps split a draining batch), but a near-tie
    (within NEAR: the estimate rests on earlier texts); with a request queued it explores as before."""
    import itertools

    from trikern.decode.registry import FAMILIES

    profiles = itertools.count()

    def explored(waiting=0, taught=False, linear4=3e-3, solo=False, steps=AutoBatch.TAUGHT):
        linear = {("spec-linear", 2): 2.9e-3, ("spec-linear", 4): linear4}  # B = 4 could win, all accepted
        monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path / str(next(profiles))))  # one profile each
        auto, seqs = four_in_ar(embedded.model, linear, 64, accepted=lambda i: 1,
                                waiting=waiting)
        if taught or solo:  # by earlier batches (`steps` sequence-steps), or by solo generations only
            auto.profile.update({}, {f: [0.5] * 7 for f in FAMILIES}, batched=not solo,
                                evidence=dict.fromkeys(FAMILIES, steps))
        ar, lin = (auto.drain_rate(seqs, k, auto.costs[4].seconds(k)) for k in (("ar", 1), ("spec-linear", 4)))
        return sum(auto.choose(seqs, [])[0] != "ar" for _ in range(3 * auto.explore.EVERY)), lin / ar

    assert explored()[0] >= 1
    assert explored(solo=True)[0] >= 1  # what solo runs learnt is not the batches' texts
    count, ratio = explored(taught=True)
    assert count == 0 and ratio < AutoBatch.NEAR  # a clear loser
    count, ratio = explored(taught=True, linear4=2.2e-3)
    assert count >= 1 and AutoBatch.NEAR <= ratio < 1  # a near-tie
    assert explored(waiting=1, taught=True)[0] >= 1
    # A prior a few steps taught is not trusted yet: a clear loser by it is explored.
    count, ratio = explored(taught=True, steps=AutoBatch.TAUGHT / 4)
    assert count >= 1 and ratio < AutoBatch.NEAR


def test_a_draining_batch_explores_a_family_its_estimates_stalled(embedded, own_profile, monkeypatch):
    """A clear loser by a taught profile's estimates is left alone by a draining batch (above) until
    its family has not run at that batch size for STALE drained batches and every sequence is past
    its first YOUNG tokens: then one exploration runs it CostModel.CONFIRM steps in a row (enough for
    live steps to confirm or overturn its stored cost), and a step of it at that batch size ends the
    stall. Without this, a wrong stored cost and prior kept 16 batches at 2 users in AR (0.87x)."""
    from trikern.decode.registry import FAMILIES

    linear = {("spec-linear", 2): 2.9e-3, ("spec-linear", 4): 3e-3}  # B = 4 could win, all accepted

    def first_exploration(drains, tokens, ran=None):
        auto, seqs = four_in_ar(embedded.model, linear, 64, accepted=lambda i: 1)
        auto.profile.update({}, {f: [0.5] * 7 for f in FAMILIES}, batched=True,
                            evidence=dict.fromkeys(FAMILIES, AutoBatch.TAUGHT))
        auto.drains = drains
        if ran is not None:
            auto.ran[(4, "spec-linear")] = ran
        for s in seqs:
            s.tokens = [5] * tokens
        picks = [auto.choose(seqs, []) for _ in range(2 * auto.explore.EVERY)]
        start = next((i for i, k in enumerate(picks) if k[0] != "ar"), None)
        run = 0 if start is None else next((j for j, k in enumerate(picks[start:]) if k != picks[start]), 0)
        return auto, seqs, (None if start is None else picks[start]), run

    S, Y = AutoBatch.STALE, AutoBatch.YOUNG
    assert first_exploration(S - 1, Y)[2] is None  # not stalled yet
    assert first_exploration(S, Y - 1)[2] is None  # a sequence still in its first tokens
    assert first_exploration(S + 3, Y, ran=4)[2] is None  # it ran at this batch size lately
    auto, seqs, key, run = first_exploration(S, Y)
    assert key == ("spec-linear", 4) and run == CostModel.CONFIRM
    auto.observe(key, seqs, {s: [5, 5] for s in seqs}, {s: 3 for s in seqs}, 3e-3, False)
    assert "spec-linear" not in auto.stalled(seqs)


def test_a_draining_batch_with_nothing_to_explore_holds_longer(embedded, monkeypatch):
    """A draining batch in AR that would explore nothing (every speculative candidate clearly behind,
    no untaught family: no profile) holds AR HOLD_QUIET steps at a time, past the refreshes that end
    an ordinary hold, and makes the same choices as one that judges every step."""
    import trikern.batch.auto as batch_auto

    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    calls = []
    real_best = batch_auto.best
    monkeypatch.setattr(batch_auto, "best", lambda *a: calls.append(1) or real_best(*a))

    def run(quiet_hold, hold=AutoBatch.HOLD):
        auto, seqs = four_in_ar(embedded.model, {}, 200, accepted=lambda i: 0)  # AR 1 ms, the rest 8
        auto.HOLD, auto.HOLD_QUIET = hold, quiet_hold
        assert not auto.dec.queue  # draining
        calls[:] = []
        picks = [auto.choose(seqs, []) for _ in range(6 * auto.explore.EVERY)]
        return picks, len(calls)

    judged, every = run(0, hold=0)
    short, more = run(AutoBatch.HOLD)  # quiet holds of an ordinary hold's length
    quiet, fewer = run(AutoBatch.HOLD_QUIET)
    assert judged == short == quiet == [("ar", 1)] * len(judged)
    # (ignoring `quiet`, both would end at the refreshes and judge alike)
    assert AutoBatch.HOLD_QUIET > AutoBatch.HOLD and fewer < more < every, (every, more, fewer)


def test_a_draining_batch_holds_the_choice_its_judgements_keep(embedded, monkeypatch):
    """A draining batch whose judgements keep choosing the current candidate (here linear B = 4,
    every draft accepted lately) holds it unjudged a step longer each time, up to STABLE steps and
    never past a refresh, and makes the choices of a batch that judges every step; with a request
    waiting (the summed rate) it judges every step."""
    import trikern.batch.auto as batch_auto

    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    calls = []
    real_best = batch_auto.best
    monkeypatch.setattr(batch_auto, "best", lambda *a: calls.append(1) or real_best(*a))
    lin4 = ("spec-linear", 4)

    def run(stable, waiting=0):
        auto, seqs = four_in_ar(embedded.model, {("spec-linear", 2): 2e-3, lin4: 2e-3}, 200, waiting=waiting)
        auto.STABLE = stable
        assert bool(auto.dec.queue) == bool(waiting)
        calls[:] = []
        picks = []
        for _ in range(4 * auto.explore.EVERY):
            picks.append(auto.choose(seqs, []))
            auto.current = picks[-1]
        return picks, len(calls)

    judged, every = run(0)
    held, fewer = run(AutoBatch.STABLE)
    assert held == judged and judged.count(lin4) > len(judged) // 2, judged
    assert AutoBatch.STABLE >= 2 and fewer < every / 2, (every, fewer)
    _, waiting = run(AutoBatch.STABLE, waiting=1)
    assert waiting == every, (waiting, every)
