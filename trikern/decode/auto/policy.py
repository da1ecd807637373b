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
- Now and then a step runs another candidate for what it tells about acceptance, within a budget
  of the decode time that follows how often exploring paid, in this generation and (through the
  profile) earlier ones (`Exploration`, exploration.py).
- Where AR wins clearly, the choice is held for a few steps without judging (`hold_steps`): the
  same choices for less per-step work.

The policy is three parts: the estimators (`CostModel`, costs.py; `Acceptance` per family,
acceptance.py), the exploration budget, and a pure choice (`best`) over what they estimate.

Only lossless strategies are candidates (AR, linear and quadratic self-speculation; never
diffusion): each step starts and ends in the shared state and keeps AR's output distribution, so
the choice, which depends only on the past, cannot change what is generated.
"""
from __future__ import annotations

from ..registry import AUTO, FAMILIES, strategy
from .acceptance import Acceptance
from .costs import CostModel
from .exploration import Exploration, family
from .profile import StepProfile


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

    def choose(self, left=None):
        return self.key

    def observe(self, key, tokens, seconds, cold, drafted=0):
        pass

    def finish(self):
        pass


def best(keys, rate, current, hysteresis: float):
    """The candidate of highest expected rate; a switch that starts with a step that verifies
    nothing (entering quadratic) is made only for a gain of `hysteresis`."""
    top = max(keys, key=rate)
    if current is not None and top[0] != current[0] and strategy(top).entry_steps(top[1], current) \
            and rate(top) < hysteresis * rate(current):
        return current
    return top


def clear_win(key, keys, rate, best_tokens, seconds, margin: float, hysteresis: float) -> bool:
    """Whether `key` (a one-token step) beats every speculative candidate by `margin`, each rated at
    `best_tokens(k)` (the higher of its current and long-run yield, where the estimate of a family
    not run drifts to) over `seconds(k)`; a candidate entered by a restart needs `hysteresis` more,
    as `best` asks. What `hold_steps` (solo and batched) holds AR on."""
    bar = rate(key) / margin
    for k in keys:
        need = bar * (hysteresis if strategy(k).entry_steps(k[1], key) else 1.0)
        if family(k) is not None and seconds(k) > 0 and best_tokens(k) / seconds(k) >= need:
            return False
    return True


def hold_until(steps: int, every: int, most: int) -> int:
    """Steps a hold may last from step `steps`: at most `most`, and never past the next refresh."""
    refresh = (steps // every + 1) * every
    return max(0, min(most, refresh - steps - 1))


class AutoPolicy:
    DECAY = 0.85  # per step of the family: acceptance is a property of the last few dozen tokens
    HOLD, HOLD_MARGIN = 8, 1.1  # see `hold_steps`
    KEEP_EXPLORED = 0.95  # per generation, the weight of earlier generations' exploration outcomes
    HYSTERESIS = 1.15  # a switch into quadratic from another mode starts with a one-token step: only
    # make it for a clear gain (the other switches cost nothing: no hysteresis)

    def __init__(self, keys, profile=None):
        self.keys = list(keys)
        self.profile = profile
        stored = None
        if profile is not None:
            stored = {k: p["seconds"] for k in self.keys if (p := profile.get(k)) is not None and p["seconds"] > 0}
        self.costs = CostModel(self.keys, stored)
        horizon = max(B for _, B in self.keys) - 1
        # The last generation's long-run hazards, as a weak prior (acceptance moves with the text).
        self.acc = {f: Acceptance(horizon, profile and profile.get_acceptance(f)) for f in FAMILIES}
        self.explore = Exploration(profile.get_exploration() if profile is not None else None)
        self.current = None
        self.restarted = False  # the last step entered quadratic with a one-token restart
        self.steps = 0
        self.hold = 0  # steps left that keep the current choice unjudged (`hold_steps`)

    def tokens(self, key) -> float:
        fam = family(key)
        return 1.0 if fam is None else self.acc[fam].expected_tokens(key[1])

    def rate(self, key) -> float:
        seconds = self.costs.seconds(key)
        return self.tokens(key) / seconds if seconds > 0 else 0.0

    def first(self):
        measured = [k for k in self.keys if self.costs.cost[k].measured]
        return max(measured, key=self.rate) if measured else self.keys[0]

    def choose(self, left: int | None = None):
        """The key of the next step; `left`: the tokens the generation may still emit (None: unknown)."""
        self.steps += 1
        if self.hold:  # a clear AR win, re-judged before the next refresh (`hold_steps`)
            self.hold -= 1
            return self.current
        if (key := self.explore.continuing()) is not None:  # e.g. a quadratic exploration's second step
            return key
        if self.restarted and self.current is not None:
            # A switch paid a restart that verified nothing (entering quadratic): take the step it
            # paid for before judging again (else the estimates, unchanged by it, can send it back).
            return self.current
        self.explore.key = None
        costs = self.costs
        if (check := costs.to_confirm()) is not None:  # confirm a second stored cost before believing the first
            self.current = check
            return check
        need = costs.unmeasured()
        if need and not costs.on_common_scale():
            self.current = self.current if self.current in costs.prior else max(costs.prior, key=self.rate)
            return self.current
        if need:  # measure on the fly, the current candidate first (no switch)
            self.current = self.current if self.current in need else need[0]
            return self.current
        cur = self.current
        self.current = best(self.keys, self.rate, cur, self.HYSTERESIS)
        key = self.explore.propose(self.steps, self.current, self.keys, self.rate, costs.seconds, left)
        if key is None:
            self.hold = self.hold_steps()
            return self.current
        self.explore.begin(key, self.rate(self.current), strategy(key).entry_steps(key[1], cur))
        return key

    def hold_steps(self) -> int:
        """Steps to keep AR, the current choice, without judging again: where it beats every
        speculative candidate by HOLD_MARGIN both under the current acceptance estimates and under
        the long-run ones (where those of families not run drift to; a candidate entered by a restart
        needs HYSTERESIS more, as `best` asks), for up to HOLD steps and never past the next
        refresh. Judging costs tens of microseconds of Python a step, which also leaves the next
        step a few percent slower (its data out of cache): on a CPU where AR wins outright, a
        measurable part of what auto lost to fixed AR."""
        key, costs = self.current, self.costs
        if family(key) is not None or key in costs.prior and key not in costs.ratios:
            return 0
        best_tokens = lambda k: max(self.tokens(k), self.acc[family(k)].long_run_tokens(k[1]))
        if not clear_win(key, self.keys, self.rate, best_tokens, costs.seconds, self.HOLD_MARGIN, self.HYSTERESIS):
            return 0
        return hold_until(self.steps, self.explore.EVERY, self.HOLD)

    def observe(self, key, tokens, seconds, cold, drafted=0):
        """A step of `key` produced `tokens` (accepted drafts + the bonus, before any EOS / budget
        cut) after verifying `drafted` draft tokens, in `seconds`."""
        fam = family(key)
        if key != self.current:  # a hold assumed only the held candidate's steps
            self.hold = 0
        self.explore.observe(self.steps, key, tokens, seconds, cold, drafted, self.costs.speed)
        for f, a in self.acc.items():
            if f == fam:
                a.step(self.DECAY, drafted, min(tokens - 1, drafted))
            else:
                a.step(self.DECAY)
        # A restart (entering quadratic: B + 1 rows, nothing verified) is not what a step costs, nor
        # is a step that grew a quadratic block (the old, shorter draft: fewer sub-blocks, cheaper;
        # counted, they priced quadratic B = 4 at its growth steps' 4.6 ms against 5.4 and drew auto
        # to grow into it again and again), nor one that captured a graph or timed matmul paths.
        self.restarted = fam is not None and drafted == 0
        grown = fam is not None and drafted < key[1] - 1
        if not (cold or self.restarted or grown):
            self.costs.observe(key, seconds)

    def finish(self):
        """Persist the estimates this generation moved: the next one starts from them."""
        if self.profile is None:
            return
        fresh, seconds = self.costs.fresh(), self.costs.fresh_seconds()
        self.profile.update({k: (seconds[k], self.tokens(k), c.live) for k, c in fresh.items()},
                            {f: a.long_run() for f, a in self.acc.items() if a.evidence},
                            drop=self.costs.distrusted - fresh.keys(),
                            exploration=self.explore.carried(self.KEEP_EXPLORED),
                            evidence={f: a.evidence for f, a in self.acc.items() if a.evidence})
