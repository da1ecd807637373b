"""Which strategy (mode, block size) runs the next step: one fixed choice, or `mode="auto"`.

`auto` picks, before every step, the candidate with the highest expected tokens per second =
expected tokens per step / expected seconds per step.

- Seconds per step depend on the device and the shapes, not on the text: a slow running average
  per candidate of the warm steps it ran (steps that compiled or captured a graph do not count),
  seeded by the persisted step-cost profile (profile.py), kept apart from a fast estimate of the
  machine's current speed so that a shared machine's slow spell does not single out whichever
  candidate ran during it. A candidate with no figure yet is measured by running it (real steps:
  the exploration still produces tokens).
- Tokens per step depend on the text: each speculative family (linear, quadratic) keeps, per draft
  position k, the hazard P(draft k is rejected | drafts before it were accepted) from exponentially
  decayed counts over the steps it ran, drifting back to the generation's long-run hazards over the
  steps it did not run (`Acceptance`). A step with B-1 drafts then yields 1 + the sum of the
  survival probabilities of positions 1 .. B-1 in expectation, so one step at any block size
  informs every block size of its family. AR yields 1.
- At most every EXPLORE_EVERY steps, and only while exploring has cost under EXPLORE_SHARE of the
  decode time, the other speculative family not run for longest runs a step (two when entering
  quadratic, whose first step only restarts) with its best candidate among those that could win if
  a whole block were accepted, so its acceptance stays current (acceptance moves with the text).
  What an exploration costs is the time it lost against the candidate it displaced for the tokens
  it produced: a speculative step is never worse than one token, so exploring from cheap AR steps
  on a CPU costs little, while counting its whole time would cap exploring at once (one step of
  B = 16 is worth three of AR there) and leave a stale prior in charge for the whole generation.
  The share itself follows how often this generation's explorations beat the setting they
  displaced (`explore_share`): where one setting wins throughout, refreshing the others is the
  whole gap between auto and that setting.
- Within the same share, a step that accepted every draft is followed by one of a larger block
  that could win (either family): the counts say nothing past the block it filled, and waiting for
  the next refresh leaves copy-like text to a block size too small for it.

Only lossless strategies are candidates (AR, linear and quadratic self-speculation; never
diffusion): each step starts and ends in the shared state and keeps AR's output distribution, so
the choice, which depends only on the past, cannot change what is generated.
"""
from __future__ import annotations

import math

from ..registry import AUTO, FAMILIES, strategy
from .acceptance import Acceptance
from .costs import Cost, implausible
from .profile import StepProfile


def family(key):
    """The speculative family of a (mode, block size) key; None for a one-token step."""
    return strategy(key).family


def policy_for(ctx, mode: str, profile: bool = True):
    """The policy of a generation: `auto`'s (with the persisted step-cost profile unless `profile`
    is False), or one fixed strategy."""
    if mode == AUTO:
        use = profile and StepProfile.enabled()
        return AutoPolicy(ctx.candidates, StepProfile(ctx.model, ctx.stats.prompt_tokens) if use else None)
    return FixedPolicy(ctx.candidates[0])


class FixedPolicy:
    def __init__(self, key):
        self.key = key

    def first(self):
        return self.key

    def choose(self):
        return self.key

    def observe(self, key, tokens, seconds, cold, drafted=0):
        pass

    def finish(self):
        pass


class AutoPolicy:
    MEASURE = 2  # warm steps a candidate runs before it competes
    COST_ALPHA = 0.1  # a candidate's own cost is a property of its shapes: it moves slowly
    SPEED_ALPHA = 0.5  # the machine's speed (other processes, clocks) moves fast
    DECAY = 0.85  # per step of the family: acceptance is a property of the last few dozen tokens
    EXPLORE_EVERY = 8
    EXPLORE_SHARE = 0.2  # of the decode time lost to exploring, times its hit rate (explore_share): a slow
    # candidate is re-checked, never paid for long
    HYSTERESIS = 1.15  # a switch into quadratic from another mode starts with a one-token step: only
    # make it for a clear gain (the other switches cost nothing: no hysteresis)
    OUTLIER = 2.0  # one step moves the speed estimate by at most this factor
    CONFIRM = 2  # live warm steps that confirm (or overturn) a cost from the profile
    TRUST = 2.0  # a stored cost further than this from its live steps is replaced by them

    def __init__(self, keys, profile=None):
        self.keys = list(keys)
        self.cost = {k: Cost() for k in self.keys}
        self.prior = set()  # keys whose cost came from the profile (until live steps overturn it)
        self.distrusted: set = set()  # profile costs refused: they break the order of work
        self.profile = profile
        horizon = max(B for _, B in self.keys) - 1
        # The last generation's long-run hazards, as a weak prior (acceptance moves with the text).
        self.acc = {f: Acceptance(horizon, profile and profile.get_acceptance(f)) for f in FAMILIES}
        if profile is not None:
            found = {k: p["seconds"] for k in self.keys if (p := profile.get(k)) is not None and p["seconds"] > 0}
            # A profile measured while the machine was busy can hold a cost that breaks the order of
            # work (an AR step dearer than a speculative one): such a prior is measured afresh.
            self.distrusted = implausible(found)
            for k, seconds in found.items():
                if k not in self.distrusted:
                    self.cost[k].seconds, self.cost[k].measured = seconds, self.MEASURE
                    self.prior.add(k)
        self.samples: dict = {k: [] for k in self.keys}  # warm steps (cost scale) being measured or confirmed
        self.ratios: dict = {}  # confirmed priors: live / stored seconds
        self.check = None  # a second prior to confirm before believing the first (its ratio was far from 1)
        self.speed = 1.0  # step times now / the costs' scale (a shared machine's slow spell: > 1)
        self.current = None
        self.explored = None  # the key chosen to explore in this step
        self.displaced = 0.0  # the rate (tokens / cost-scale second) of the candidate it displaced
        self.explore_left = 0  # further steps of the same exploration
        self.last_run: dict[str, int] = {}  # mode -> the last step index it ran
        self.restarted = False  # the last step entered quadratic with a one-token restart
        self.saturated = 0  # the block size whose every draft the last step accepted (0: none)
        self.steps = 0
        self.seconds = self.explore_s = 0.0
        self.explore_hits = self.explore_tries = 0  # exploration steps that beat the setting they displaced
        self.overturned: set = set()  # priors that live steps replaced

    def tokens(self, key) -> float:
        family = strategy(key).family
        return 1.0 if family is None else self.acc[family].expected_tokens(key[1])

    def rate(self, key) -> float:
        c = self.cost[key]
        return self.tokens(key) / c.seconds if c.measured and c.seconds > 0 else 0.0

    def first(self):
        measured = [k for k in self.keys if self.cost[k].measured]
        return max(measured, key=self.rate) if measured else self.keys[0]

    def choose(self):
        self.steps += 1
        if self.explore_left:  # a quadratic exploration's second step: its first only restarted
            self.explore_left -= 1
            return self.explored
        if self.restarted and self.current is not None:
            # A switch paid a restart that verified nothing (entering quadratic): take the step it
            # paid for before judging again (else the estimates, unchanged by it, can send it back).
            return self.current
        self.explored = None
        if self.check in self.prior and self.check not in self.ratios:  # confirm a second stored cost
            self.current = self.check  # before believing the first
            return self.check
        need = [k for k in self.keys if self.cost[k].measured < self.MEASURE]
        if need and self.prior and not self.ratios:
            # Costs measured on the fly have no common scale with stored ones until one is confirmed.
            self.current = self.current if self.current in self.prior else max(self.prior, key=self.rate)
            return self.current
        if need:  # measure on the fly, the current candidate first (no switch)
            self.current = self.current if self.current in need else need[0]
            return self.current
        best = max(self.keys, key=self.rate)
        cur = self.current
        if cur is not None and best[0] != cur[0] and strategy(best).entry_steps(best[1], cur) \
                and self.rate(best) < self.HYSTERESIS * self.rate(cur):
            best = cur
        self.current = best
        key = self.explore(best) if self.explore_s <= self.explore_share() * self.seconds else None
        if key is None:
            return best
        self.displaced, self.explored = self.rate(best), key
        # Entering quadratic, the first step restarts (verifies nothing); growing its block, the
        # first step verifies the old, shorter draft: take one more either way.
        self.explore_left = strategy(key).entry_steps(key[1], cur)
        return key

    def explore_share(self) -> float:
        """The share of decode time exploring may lose: EXPLORE_SHARE scaled by how often this
        generation's explorations beat the setting they displaced (Laplace: half of it before any).
        Where one setting wins throughout (AR on a CPU without fast bf16, text that drafts poorly)
        the refreshes stop paying, and their cost is what keeps auto below that setting."""
        return self.EXPLORE_SHARE * (self.explore_hits + 1) / (self.explore_tries + 2)

    def explore(self, best):
        """A candidate to run instead of `best` for what it tells (its acceptance), or None. Only
        acceptance needs exploring (costs are known), and only candidates that could win if a whole
        block were accepted are worth it."""
        filled = self.saturated and best[1] <= self.saturated
        if not filled and self.steps % self.EXPLORE_EVERY:
            return None
        bar = self.rate(best)
        could = [k for k in self.keys if family(k) and k != best and k[1] / self.cost[k].seconds > bar]
        if filled:
            # The last step accepted every draft: nothing is known past its block, so a larger block
            # (either family) is tried now rather than at the next refresh. On copy-like text that
            # step is no loss, and it is what lets the long blocks that pay there take over.
            larger = [k for k in could if k[1] > self.saturated]
            if larger:
                return max(larger, key=lambda k: k[1] / self.cost[k].seconds)
        if self.steps % self.EXPLORE_EVERY == 0:
            # One step of a family informs all its block sizes: refresh the family not run for
            # longest, with its best candidate.
            other = [k for k in could if family(k) != family(best)]
            if other:
                stale = min((f for f in FAMILIES if any(family(k) == f for k in other)),
                            key=lambda f: self.last_run.get(f, -1))
                return max((k for k in other if family(k) == stale), key=self.rate)
        return None

    def observe(self, key, tokens, seconds, cold, drafted=0):
        """A step of `key` produced `tokens` (accepted drafts + the bonus, before any EOS / budget
        cut) after verifying `drafted` draft tokens, in `seconds`."""
        fam = family(key)
        c = self.cost[key]
        self.last_run[fam or key[0]] = self.steps
        self.seconds += seconds
        if key == self.explored and not cold:  # its regret: the time beyond what the displaced candidate needed
            needed = tokens * self.speed / self.displaced if self.displaced > 0 else 0.0
            self.explore_s += max(0.0, seconds - needed)
            if drafted:  # a step that verified drafts (not a quadratic restart): did it beat the incumbent?
                self.explore_tries += 1
                self.explore_hits += seconds <= needed
        for f, a in self.acc.items():
            if f == fam:
                a.step(self.DECAY, drafted, min(tokens - 1, drafted))
            else:
                a.step(self.DECAY)
        # A restart (entering quadratic: B + 1 rows, nothing verified) is not what a step costs.
        self.restarted = fam is not None and drafted == 0
        self.saturated = drafted + 1 if drafted and tokens > drafted else 0  # the block it filled
        if cold or self.restarted:  # nor does a step that captured a graph or timed matmul paths
            return
        c.live += 1
        if c.measured < self.MEASURE:  # measuring: the fastest of its first steps (a busy moment only slows)
            self.samples[key].append(seconds / self.speed)
            c.seconds, c.measured = min(self.samples[key]), c.measured + 1
            return
        if key in self.prior and c.live <= self.CONFIRM:
            self.confirm(key, seconds)
            return
        # Costs are kept at one scale and the machine's current speed apart: a slow spell that hits
        # whichever candidate is running then moves the speed, not that candidate's cost, so it
        # does not change which candidate wins (the speed cancels out of the comparison).
        raw = seconds / c.seconds
        ratio = min(max(raw, self.speed / self.OUTLIER), self.speed * self.OUTLIER)
        self.speed += self.SPEED_ALPHA * (ratio - self.speed)
        if raw <= self.speed * self.OUTLIER:  # a step far slower than the machine now is (a hiccup): no cost
            c.seconds += self.COST_ALPHA * (seconds / self.speed - c.seconds)
        c.measured += 1

    def confirm(self, key, seconds: float):
        """A persisted cost meets its first live steps. Its ratio live / stored is the machine's
        speed against the profile's moment when the profile is right, and every candidate shares
        that factor; a candidate whose ratio disagrees with the others' by more than TRUST has a
        wrong stored cost, and its live one replaces it (a live cost is never outvoted by a stored
        one). The first ratio alone cannot tell a slower machine from a wrong cost: if it is far
        from 1, a second candidate is checked before the two are believed."""
        c, samples = self.cost[key], self.samples[key]
        samples.append(seconds)
        if len(samples) < self.CONFIRM:
            return
        self.ratios[key] = min(samples) / c.seconds
        ref = self.reference_speed()
        for k, r in self.ratios.items():
            if not 1 / self.TRUST <= r / ref <= self.TRUST:
                self.cost[k].seconds *= r / ref
                self.ratios[k] = ref
                self.overturned.add(k)
        # Costs measured on the fly so far were divided by the speed estimate of their time: bring
        # them to the scale the stored costs now set.
        for k in self.keys:
            if k not in self.prior and self.cost[k].measured:
                self.cost[k].seconds *= self.speed / ref
                self.samples[k] = [x * self.speed / ref for x in self.samples[k]]
        self.speed = ref
        far = not 1 / self.TRUST <= ref <= self.TRUST
        unchecked = [k for k in self.prior if k not in self.ratios]
        self.check = min(unchecked, key=lambda k: self.cost[k].seconds) if far and len(self.ratios) == 1 \
            and unchecked else None
        # Stored costs not run yet that now break the order of work against live ones: measure them.
        live_keys = {k for k in self.keys if k in self.ratios or k not in self.prior}
        known = {k: self.cost[k].seconds for k in self.keys if self.cost[k].measured >= self.MEASURE}
        for k in implausible(known, fixed=live_keys & known.keys()):
            self.cost[k], self.samples[k] = Cost(), []
            self.prior.discard(k)
            self.distrusted.add(k)

    def reference_speed(self) -> float:
        """The machine's speed against the profile, from the confirmed ratios: their median from
        three on; of two that disagree, the one nearer 1 (a profile is more often right than wrong)."""
        r = sorted(self.ratios.values())
        if len(r) >= 3:
            return r[len(r) // 2]
        if len(r) == 2 and r[1] / r[0] > self.TRUST:
            return min(r, key=lambda x: abs(math.log(x)))
        return math.sqrt(r[0] * r[-1])

    def finish(self):
        """Persist the estimates this generation moved: the next one starts from them."""
        if self.profile is None:
            return
        fresh = {k: c for k, c in self.cost.items() if c.live >= (self.CONFIRM if k in self.prior else self.MEASURE)}
        self.profile.update({k: (c.seconds, self.tokens(k), c.live) for k, c in fresh.items()},
                            {f: a.long_run() for f, a in self.acc.items() if a.evidence},
                            drop=self.distrusted - fresh.keys())
