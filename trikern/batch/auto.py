"""`mode="auto"` for a batch: before every step, the (mode, block size) with the highest expected
aggregate tokens per second for the sequences decoding now.

What a step of a candidate costs depends on how many sequences it carries: one forward over n chains
reads the weights once, so AR's step grows slowly with n while a wide speculative step grows with
its rows. So the step costs are kept per batch size, one `CostModel` each (decode/auto/costs.py: a
slow running average per candidate, apart from the machine's current speed). Each batch size starts
from the persisted profile's costs at that size (`trikern tune --decode --batch-sizes`, or
`Model.warmup(batch_sizes=...)`; between measured sizes, linear in n), as priors its live steps
confirm or overturn (CostModel's rule for a profile from another moment). Without batch sizes in the
profile, batch size 1 starts from the single-sequence profile, as a solo `auto` does, and a batch
size not seen yet from the costs of the nearest one measured live: one scale factor for every
candidate, which is wrong (at 8 chains AR was priced 1.4x its cost from one chain's figures, and
linear B = 4 won the choice where AR was 10% faster). What a step yields depends on each sequence's
text: every sequence keeps its own `Acceptance` per speculative family, starting from the prior
earlier batches left in the profile (`prior`: the batches' own, apart from solo generations'), so
the expected tokens of a candidate are the sum over the batch, and the choice is decode/auto's pure
`best` over that sum divided by the cost at this batch size. A step now and then explores another
family within decode/auto's `Exploration` budget, on the aggregate figures; whether exploring pays
depends on the batch size (on a 2-core EPYC about two thirds of the explorations paid at 4 sequences
and a quarter at 8, where AR mostly wins), so each batch size keeps its own budget and hit rate,
carried between batches in the profile as a solo generation's is. Where AR beats every speculative
candidate clearly, the choice is held for a few steps without judging, as a solo `auto` holds it:
judging sums every sequence's estimates (about 0.15 ms a step at 8 sequences), time the held steps
save; for the same reason a draining batch holds whatever its judgements keep choosing, a step
longer each time they keep it (`hold_stable`).

What "highest aggregate tokens per second" means depends on whether a request waits. If one does, a
region freed early serves it at once, and the summed yield of the step over its cost is the rate
(`step_rate`). If none does, the batch is done when its last sequence is: the rate is that of the
candidate kept until the batch has drained, its sequences leaving one by one (`drain_rate`), and no
step explores (a speculative step that puts some sequences ahead leaves the others to finish at
smaller batch sizes, which cost nearly as much a step for fewer tokens), but for a near-tie (the
prior behind an estimate may be another text's) or a family the profile has learnt nothing of yet
(`drain_explorable`).

Every candidate is lossless (AR, linear and quadratic self-speculation) and every step starts and
ends in the same state (the region holds all emitted tokens but `pending`), so switching keeps each
sequence's output what its solo run gives. Two rules keep the state right: joining sequences are
admitted as AR admits them (the whole prompt prefilled, the first token from its logits), so a step
with prefill pieces runs a causal candidate (AR or spec-linear: QUADRATIC cannot carry a causal
chunk); and a sequence entering a quadratic block size (from another candidate, or new to the
batch) starts from the one-token draft `[pending]`, the restart a solo `auto` pays too.
"""
from __future__ import annotations

import time

from .. import warmup
from ..decode.auto.acceptance import Acceptance
from ..decode.auto.costs import CostModel
from ..decode.auto.exploration import Exploration, family
from ..decode.auto.policy import AutoPolicy, best, clear_win, hold_until
from ..decode.auto.profile import StepProfile
from ..decode.context import AUTO
from ..decode.registry import FAMILIES, candidates
from .steps import STEPS, BatchStep

QUAD = "spec-quadratic"


class AutoBatch(BatchStep):
    mode = AUTO
    DECAY, HYSTERESIS = AutoPolicy.DECAY, AutoPolicy.HYSTERESIS
    HOLD, HOLD_MARGIN, KEEP_EXPLORED = AutoPolicy.HOLD, AutoPolicy.HOLD_MARGIN, AutoPolicy.KEEP_EXPLORED
    DRAIN_HORIZON = 128  # tokens of a sequence's room that `drain_rate` counts on
    NEAR = 0.85  # a draining batch explores candidates whose estimated rate is within this of the best's
    HOLD_QUIET = 16  # steps a hold lasts when a draining batch would explore nothing (`hold_steps`)
    STABLE = 4  # steps a draining batch's choice is held unjudged after judgements kept it (`hold_stable`)
    TAUGHT = 16  # sequence-steps behind a family's batches' prior before a draining batch trusts it (`untaught`)
    STALE = 8  # drained batches a family may go unrun at a batch size before a draining batch explores it
    # (each such exploration splits a batch that AR drains best: benchmarks/replay_batch_auto.py at 8
    # users, mean of four cost tables, 1.000 -> 0.993 without noise, 0.988 -> 0.985 with; STALE = 4: 0.978)
    YOUNG = 8  # ... once every sequence is past its first tokens, whose drafts are poorer (`stalled`)

    def __init__(self, dec, B: int, profile: bool = True):
        super().__init__(dec, B)
        self.keys = candidates(AUTO, B, dec.cfg)
        # Acceptance is kept for the candidates' families only (no draft trees in a batch): every
        # step decays each sequence's estimates, ~1 us apiece.
        self.families = tuple(f for f in FAMILIES if any(family(k) == f for k in self.keys))
        self.kinds = {k: STEPS[k[0]](dec, k[1]) for k in self.keys}
        self.horizon = max(b for _, b in self.keys) - 1
        # The shortest cache-length bucket: the batch's sequences have lengths of their own.
        self.profile = StepProfile(dec.model, 0) if profile and StepProfile.enabled() else None
        self.stored = None
        self.tables: dict = {}  # key -> {batch size: stored seconds per step}
        if self.profile is not None:
            self.stored = {k: p["seconds"] for k in self.keys if (p := self.profile.get(k)) and p["seconds"] > 0}
            self.tables = {k: self.profile.batch_seconds(k) for k in self.keys}
        self.costs: dict[int, CostModel] = {}
        self.acc: dict = {}  # sequence -> {family: Acceptance}
        self.ended: list = []  # the Acceptance dicts of sequences that left, not yet taught (`teach_prior`)
        self.taught: dict = {}  # family -> whether the profile's batches' prior is trusted (`untaught`)
        self.explorations: dict[int, Exploration] = {}  # batch size -> its budget (`exploration`)
        self.explore = self.exploration(1)  # the current step's batch size's
        self.current = None
        self.hold = 0  # steps left that keep the current choice unjudged (`hold_steps`, `hold_stable`)
        self.agreed = 0  # judgements in a row of a draining batch that kept the current key (`STABLE`)
        self.held_n = 0  # ... at this batch size, without prefill pieces
        self.restarted = False  # the last step was a quadratic restart (nothing verified)
        self.quad_ready: set = set()  # sequences whose draft was made by the current quadratic key
        self.steps = 0
        self.drains = 0  # batches this decoder has drained
        self.ran: dict = {}  # (batch size, family) -> `drains` at its last step there (`stalled`)
        self.chosen: dict = {}  # (batch size, key) -> steps (figures, tests)
        self.own_seconds = 0.0  # choosing, observing and the drains' profile writes (figures)

    @staticmethod
    def scratch(B: int) -> int:
        return max(STEPS[m].scratch(B) for m in ("ar", "spec-linear", QUAD))

    def restart(self, seq, pending):
        seq.pending = pending
        self.quad_ready.discard(seq)

    # -- estimates ---------------------------------------------------------------------------
    def cost_model(self, n: int) -> CostModel:
        """The step costs at batch size `n` (made on first use; see the module docstring)."""
        if n not in self.costs:
            stored = self.measured_at(n)
            if stored is None:
                near = sorted(self.costs, key=lambda m: (abs(m - n), m))
                stored = self.stored if n == 1 or not near else \
                    {k: c.seconds for k, c in self.costs[near[0]].cost.items() if c.measured >= CostModel.MEASURE}
            self.costs[n] = CostModel(self.keys, stored or None)
        return self.costs[n]

    def measured_at(self, n: int) -> dict | None:
        """Stored costs at batch size `n` from the profile's batch sizes (`trikern tune --decode
        --batch-sizes`): measured at n, else linear in n between the measured sizes around it (beyond
        the largest, along the last segment); None when the profile has no batch size but 1."""
        if not any(m > 1 for t in self.tables.values() for m in t):
            return None
        out = {}
        for k, table in self.tables.items():
            sizes = sorted(table)
            if n in table:
                out[k] = table[n]
                continue
            lo = [m for m in sizes if m < n][-2:]
            hi = [m for m in sizes if m > n][:1]
            pair = (lo[-1], hi[0]) if lo and hi else tuple(lo) if len(lo) == 2 else None
            if pair is not None:
                (a, b), (ya, yb) = pair, (table[pair[0]], table[pair[1]])
                out[k] = max(ya + (yb - ya) * (n - a) / (b - a), min(ya, yb))
        return out

    def exploration(self, n: int) -> Exploration:
        """The exploration budget at batch size `n`, from the profile's outcomes at `n` (batch size 1:
        a solo generation's, which this decoder reads but leaves to solo generations to write)."""
        if n not in self.explorations:
            prior = self.profile.get_exploration(n) if self.profile is not None else None
            self.explorations[n] = Exploration(prior)
        return self.explorations[n]

    def prior(self, fam) -> list | None:
        """A joining sequence's acceptance prior of `fam`: what earlier batches taught the profile
        (`teach_prior`), apart from the solo generations' prior. A server's texts are not the ones a
        user runs alone: after solo runs on code prompts (drafts failing at position 3) the shared
        prior priced linear B = 4 at 2.1 tokens a step at 4 users where the bench's texts gave 2.8,
        and batched auto ran AR throughout, 0.83-0.90x the best fixed setting."""
        return None if self.profile is None else self.profile.get_acceptance(fam, batched=True)

    def acceptance(self, seq) -> dict:
        if seq not in self.acc:
            self.acc[seq] = {f: Acceptance(self.horizon, self.prior(f)) for f in self.families}
        return self.acc[seq]

    def tokens(self, decoding, key) -> float:
        """Expected tokens of a step of `key` summed over `decoding`, each sequence's capped by its room
        (a block longer than the tokens a sequence may still emit yields no more than a shorter one)."""
        fam = family(key)
        return float(len(decoding)) if fam is None else \
            sum(self.acceptance(s)[fam].expected_tokens(max(1, min(key[1], s.emitter.room))) for s in decoding)

    # -- the choice ----------------------------------------------------------------------------
    def choose(self, decoding, prefill) -> tuple:
        n = len(decoding)
        keys = [k for k in self.keys if not (prefill and k[0] == QUAD)]
        if n == 0:  # prefill pieces alone: one causal pass
            return ("ar", 1)
        self.steps += 1
        if self.hold and n == self.held_n and not prefill and self.current in keys:
            self.hold -= 1
            return self.current
        self.hold = 0
        costs = self.cost_model(n)
        self.explore = self.exploration(n)
        if self.restarted and self.current in keys:  # take the step the restart paid for
            return self.current
        if (key := self.explore.continuing()) is not None and key in keys:
            return key
        self.explore.key = None
        if (check := costs.to_confirm()) is not None and check in keys:
            return check
        need = [k for k in costs.unmeasured() if k in keys]
        if need:  # measure on the fly, the current candidate first (no switch)
            return self.current if self.current in need else need[0]

        # No request waits for a region (here or in a server's queue): `drain_rate`.
        drain = not (self.dec.queue or self.dec.waiting_elsewhere) and n > 1

        rates: dict = {}  # the choice, the exploring and the hold ask for the same rates

        def rate(k):
            if (r := rates.get(k)) is None:
                s = costs.seconds(k)
                r = rates[k] = 0.0 if s <= 0 else \
                    self.drain_rate(decoding, k, s) if drain else self.step_rate(decoding, k, s)
            return r

        cur = self.current if self.current in keys else None
        top = best(keys, rate, cur, self.HYSTERESIS)
        # The exploration budget reasons per sequence: a block's optimistic yield is B per chain. A
        # draining batch explores only near-ties and families the profile knows nothing of
        # (`drain_explorable`): such a step splits the batch as it drains (`drain_rate`).
        left = max(s.emitter.room for s in decoding)  # what a refresh can still pay back over
        stalled = self.stalled(decoding) if drain else set()
        explorable = self.drain_explorable(keys, top, rate, stalled) if drain else keys
        key = self.explore.propose(self.steps, top, explorable, rate, lambda k: costs.seconds(k) / n, left)
        if key is None:
            quiet = drain and all(family(k) is None for k in explorable)  # a refresh would explore nothing
            hold = self.hold_steps(top, decoding, costs, rate, bool(prefill), quiet)
            self.hold, self.held_n = max(hold, self.hold_stable(top == cur and drain and not prefill)), n
            return top
        self.agreed = 0
        # A stalled family's exploration runs the steps that confirm its cost (CostModel.CONFIRM).
        extra = (1 if key[0] == QUAD and key != self.current else 0) + \
            (CostModel.CONFIRM - 1 if family(key) in stalled else 0)
        self.explore.begin(key, rate(top), extra)
        return key

    def stalled(self, decoding) -> set:
        """The families that have not run at this batch size in the last STALE drained batches (or
        since the decoder began, STALE batches ago), once every sequence is past its first YOUNG
        tokens (before that, none). A draining batch explores nothing its estimates put clearly
        behind (`drain_explorable`), so estimates that wrongly do stay wrong: nothing runs the family
        to correct them. Seen on a 2-core EPYC: a tune that put linear B = 4 at 2 sequences at 2.81x
        an AR step (2.04-2.34x in four other tunes, 2.28x in place) and a batches' prior the first
        tokens' drafts had taught (h1-h3 0.27 / 0.57 / 0.78, against 0.11 / 0.23 / 0.39 past the
        first 8 tokens) kept 16 batches at 2 users in AR throughout, 0.87x fixed linear B = 4. Past
        the first tokens, so that what the step sees is what the rest of the batch would."""
        if min(len(s.tokens) for s in decoding) < self.YOUNG:
            return set()
        n = len(decoding)
        return {f for f in self.families if self.drains - self.ran.get((n, f), 0) >= self.STALE}

    def drain_explorable(self, keys, top, rate, stalled=frozenset()) -> list:
        """What a draining batch may explore: AR, a family the profile has not learnt (`untaught`), and
        a candidate its estimates put within NEAR of `top`. A sequence's estimate of a family it has
        not run is the prior, which earlier texts set: replayed from a prior that code prompts left
        (drafts failing at position 3), auto ran AR at 2 users throughout where linear B = 4 or 8
        was best, 0.77-0.97x the best fixed setting (benchmarks/replay_batch_auto.py); exploring
        near-ties, 0.98-1.07x, and from a fresh profile 0.99-1.10x (was 0.96-1.05x). A clear loser
        is left alone: at 8 users AR wins by far and no step splits the batch; but a family `stalled`
        behind its estimates is explored (rarely: every STALE drained batches at most)."""
        untaught = {f for f in self.families if self.untaught(f)} | set(stalled)
        near = self.NEAR * rate(top)
        return [k for k in keys if k == top or family(k) is None or family(k) in untaught or rate(k) >= near]

    def untaught(self, fam) -> bool:
        """Whether the batches have taught the profile little of `fam` yet: no prior (a fresh machine
        or model), or one behind fewer than TAUGHT sequence-steps that verified a draft. A draining
        batch explores such families: if it never did, a server whose batches always drain (every
        request in at once) kept the generic prior, which undervalues speculation, and ran AR at 2
        users for good where linear B = 4 or 8 was best (0.78-0.97x the best fixed setting replayed
        from a fresh profile, benchmarks/replay_batch_auto.py; 0.82-0.89x in three of eight real
        runs); and a prior two unlucky steps had set (h1 = 0.75) did the same (0.71x in a real run,
        0.84-0.89x replayed from h1 = 0.8). Its explorations teach the prior (`teach_prior`); once
        taught, a draining batch explores near-ties only. Without a profile nothing is taught: a
        draining batch explores near-ties only."""
        if fam not in self.taught:  # (asked at every judged step of a draining batch; moves at `teach_prior`)
            self.taught[fam] = self.profile is None or self.profile.acceptance_evidence(fam, batched=True) >= self.TAUGHT
        return not self.taught[fam]

    def entering(self, key) -> bool:
        """Whether a step of `key` restarts the sequences (a quadratic block other than the current)."""
        return key[0] == QUAD and key != self.current

    def step_rate(self, decoding, key, seconds: float) -> float:
        """Expected tokens per second of a step of `key` summed over the batch: the choice while a
        request waits (a region freed early serves it at once). Entering quadratic costs a restart
        step of one token each, paid back only over the steps the longest room still needs (entered
        near the end of a batch's sequences, at 4 users, it cost ~4% of the aggregate)."""
        got = self.tokens(decoding, key)
        if not self.entering(key):
            return got / seconds
        room = max(s.emitter.room for s in decoding)
        steps = room / max(got / len(decoding), 1.0)
        return got / seconds * steps / (steps + 1.0)

    def drain_rate(self, decoding, key, seconds: float) -> float:
        """Tokens per second of `key` kept until the batch has drained: the choice when no request
        waits, for then the batch is done when its last sequence is (the aggregate the issue and the
        benchmark measure). Each sequence needs its room (at most DRAIN_HORIZON tokens: past it the
        end is EOS's, unknown) at its expected tokens a step; the steps until the first leaves cost
        this batch size's step, the next ones the next size's, and so on (plus a restart step when
        entering quadratic). A step that puts some sequences far ahead is no gain here: the ones
        left behind then run at smaller batch sizes, where a step costs nearly as much for fewer
        tokens. Summed yields priced such steps as gains, and so did exploring, which draining does
        not do (`untaught` aside): on the benchmark's batches (every user at once, one budget) the
        ragged end they left was ~19% of auto's time at 8 users, and auto ran 0.88-0.95x fixed AR there
        (1.01x and 0.96-0.98x with this rate, no exploring; README, Several users)."""
        fam = family(key)
        need = []  # (steps, tokens) per sequence
        for s in decoding:
            work = max(1, min(s.emitter.room, self.DRAIN_HORIZON))
            per_step = 1.0 if fam is None else self.acceptance(s)[fam].expected_tokens(min(key[1], work))
            need.append((work / per_step, work))
        need.sort()
        total = seconds if self.entering(key) else 0.0
        done, n = 0.0, len(need)
        for steps, _ in need:  # the sequences leave in the order of the steps they need
            if steps > done:
                cost = seconds if n == len(need) else self.cost_model(n).seconds(key)
                total += (steps - done) * (cost if cost > 0 else seconds)
                done = steps
            n -= 1
        return sum(w for _, w in need) / total if total > 0 else 0.0

    def hold_steps(self, key, decoding, costs: CostModel, rate, prefill: bool, quiet: bool = False) -> int:
        """Steps to keep AR, the step's choice `key`, unjudged after it: as a solo `auto`
        (AutoPolicy.hold_steps), on the batch's summed yields; not while prefill pieces ride. A hold
        ends before the next refresh of the other family, unless `quiet` (a draining batch with
        nothing it would explore): then it lasts HOLD_QUIET steps (a judgement over 8 sequences
        costs ~0.27 ms, and at 8 users auto held in AR ran 5% behind fixed AR)."""
        if prefill or family(key) is not None or key in costs.prior and key not in costs.ratios:
            return 0

        def best_tokens(k):
            f = family(k)
            return sum(max(a[f].expected_tokens(k[1]), a[f].long_run_tokens(k[1]))
                       for a in map(self.acceptance, decoding))
        if not clear_win(key, self.keys, rate, best_tokens, costs.seconds, self.HOLD_MARGIN, self.HYSTERESIS):
            return 0
        return self.HOLD_QUIET if quiet else hold_until(self.steps, self.explore.EVERY, self.HOLD)

    def hold_stable(self, kept: bool) -> int:
        """Steps to hold a draining batch's choice unjudged when this judgement `kept` the current
        candidate: one more for every judgement in a row that kept it, at most STABLE, never past the
        next refresh. A draining batch's rate already prices its choice as kept to the end
        (`drain_rate`), and judging is most of auto's own time (on a 2-core EPYC at 4 users ~0.14 ms
        a judgement, against a 6 ms AR step: with the profile writes 2.5-3.3% of the decode time, most
        of what auto lost to fixed linear B = 4 where it ran that alone). Replayed over four CPUs'
        costs with timing noise (benchmarks/replay_batch_auto.py --noise 1,2,3,4,5,6), its choices were
        worth the same as judging every step (auto / best fixed at 2 / 4 / 8 users 1.020 / 1.003 /
        0.990 against 1.018 / 1.009 / 0.990); from a fresh tune, 12 batches, it judged 204 of 368
        steps at 2 users and 266 of 550 at 4, against 324 of 386 and 524 of 587 (at 8, where AR's
        holds already cover most steps, 94 of ~778 either way)."""
        self.agreed = self.agreed + 1 if kept else 0
        return hold_until(self.steps, self.explore.EVERY, min(self.agreed, self.STABLE)) if self.agreed else 0

    def drained(self):
        """Persist the batch sizes' costs the live steps stand behind (on the profile's scale, as a
        solo `auto` persists its own): the next decoder, or server, starts from them. Batch size 1
        is the single-sequence profile's, which solo generations keep."""
        self.drains += 1
        if self.profile is None:
            return
        t0 = time.perf_counter()
        fresh = {n: {k: (sec, cm.cost[k].live) for k, sec in cm.fresh_seconds().items()}
                 for n, cm in self.costs.items() if n > 1}
        outcomes = {n: e.carried(self.KEEP_EXPLORED) for n, e in self.explorations.items() if n > 1 and e.tries}
        with self.profile.one_write():  # one file write (StepProfile.one_write)
            self.teach_prior()
            self.profile.update_batch({n: c for n, c in fresh.items() if c}, outcomes)
        # The next batch starts from what the profile now holds, as a next solo generation does.
        self.explorations.clear()
        self.explore = self.exploration(1)
        self.own_seconds += time.perf_counter() - t0

    def teach_prior(self):
        """The sequences that left (at a drain, or every max_batch of them) move the profile's
        acceptance prior as one solo generation does, their counts pooled (one write): sequences
        that join later, and the next batch, start from the text this decoder is serving. (Without
        it, batched auto's prior was whatever solo generations left: on the benchmark's prompts it
        put linear B = 4 at 2.5 tokens a step where it gave 2.9, and auto ran AR at 4 users, where
        linear B = 4 was 17% faster.) Pooled, not one blend per leaving sequence: under
        speculation the sequences whose drafts fail finish last, and the last blends would weigh
        most."""
        ended = self.ended + [self.acc.pop(s) for s in list(self.acc) if s.done or s.slot is None]
        self.ended = []
        pooled = {f: Acceptance.pooled(parts) for f in self.families
                  if (parts := [acc[f] for acc in ended if acc[f].evidence])}
        if self.profile is not None and pooled:
            self.profile.update({}, {f: a.long_run() for f, a in pooled.items()}, batched=True,
                                evidence={f: a.evidence for f, a in pooled.items()})
            self.taught.clear()

    # -- one step ----------------------------------------------------------------------------
    def run(self, decoding, prefill):
        t_in = time.perf_counter()
        key = self.choose(decoding, prefill)
        kind = self.kinds[key]
        if key[0] == QUAD:
            for s in decoding:
                if key != self.current or s not in self.quad_ready:
                    kind.restart(s, s.pending)
        drafted = {s: (s.draft.shape[0] - 1 if key[0] == QUAD else key[1] - 1) for s in decoding}
        warm = warmup.count
        t0 = time.perf_counter()
        out = kind.run(decoding, prefill)  # ends with the step's one host read
        seconds = time.perf_counter() - t0
        self.forwards, self.speculative = kind.forwards, kind.speculative
        self.quad_ready = set(decoding) if key[0] == QUAD else set()
        self.current = key
        self.chosen[(len(decoding), key)] = self.chosen.get((len(decoding), key), 0) + 1
        self.observe(key, decoding, out, drafted, seconds, bool(prefill) or warmup.count != warm)
        self.own_seconds += time.perf_counter() - t_in - seconds
        return out

    def observe(self, key, decoding, out, drafted, seconds, cold):
        """Acceptance per sequence, then the cost at this batch size (steps with prefill pieces, that
        warmed something up or only restarted quadratic drafts are not what the step costs)."""
        fam = family(key)
        n = len(decoding)
        self.ended += [self.acc.pop(s) for s in list(self.acc) if s.done or s.slot is None]
        if len(self.ended) >= self.dec.max_batch:  # a server's batch may never drain
            self.teach_prior()
        total = 0
        for s in decoding:
            got = len(out.get(s, ()))
            total += got
            for f, a in self.acceptance(s).items():
                if f == fam:
                    a.step(self.DECAY, drafted[s], min(got - 1, drafted[s]))
                else:
                    a.step(self.DECAY)
        if n == 0:
            return
        verified = sum(drafted.values())
        if fam is not None:
            self.ran[(n, fam)] = self.drains
        costs = self.cost_model(n)
        self.explore.observe(self.steps, key, total, seconds, cold, verified, costs.speed)
        # Saturation is the batch's: every chain filled its block (the aggregate counts cannot say).
        self.explore.saturated = key[1] if fam and all(len(out.get(s, ())) > drafted[s] > 0 for s in decoding) else 0
        self.restarted = fam is not None and verified == 0
        if not (cold or self.restarted):
            costs.observe(key, seconds)
