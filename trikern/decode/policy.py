"""Which strategy (mode, block size) runs the next step: one fixed choice, or `mode="auto"`.

`auto` picks, before every step, the candidate with the highest expected tokens per second =
expected tokens per step / expected seconds per step.

- Seconds per step depend on the device and the shapes, not on the text: a slow running average
  per candidate of the warm steps it ran (steps that compiled or captured a graph do not count),
  seeded by the persisted step-cost profile (profile.py), kept apart from a fast estimate of the
  machine's current speed so that a shared machine's slow spell does not single out whichever
  candidate ran during it. A candidate with no figure yet is measured by running it (real steps:
  the exploration still produces tokens).
- Tokens per step depend on the text: each speculative family (linear, quadratic) keeps one
  acceptance rate a = P(the next draft token is accepted), from exponentially decayed counts of
  accepted drafts and rejections over the steps it ran, drifting back to the generation's long-run
  rate over the steps it did not run. With B-1 drafts a step then yields 1 + a + ... + a^(B-1)
  tokens in expectation, so one step at any block size informs every block size of its family.
  AR yields 1.
- At most every EXPLORE_EVERY steps, and only while exploring has cost under EXPLORE_SHARE of the
  decode time, the candidate not run for longest among those that could win if a whole block were
  accepted runs once, so the other family's rate stays current (acceptance moves with the text).

Only lossless strategies are candidates (AR, linear and quadratic self-speculation; never
diffusion): each step starts and ends in the shared state and keeps AR's output distribution, so
the choice, which depends only on the past, cannot change what is generated.
"""
from __future__ import annotations

from dataclasses import dataclass

from .ar import AR
from .diffusion import Diffusion
from .spec_linear import LinearSpec
from .spec_quadratic import QuadraticSpec

STRATEGIES = {cls.mode: cls for cls in (AR, Diffusion, LinearSpec, QuadraticSpec)}
AUTO = "auto"
SPEC_FAMILIES = ("spec-linear", "spec-quadratic")
AUTO_LINEAR_BLOCKS = (2, 4, 8, 16, 32)
AUTO_QUADRATIC_BLOCKS = (2, 4, 8, 16)  # B(B+1) rows per forward: wider steps cost more than they accept


def candidates(mode: str, block_size: int, cfg) -> list[tuple[str, int]]:
    """The (mode, block size) keys a generation may run; `block_size` caps auto's block sizes."""
    if mode == "ar":
        return [("ar", 1)]
    if mode != AUTO:
        return [(mode, block_size)]
    keys = [("ar", 1)]
    if cfg.tri_mode and cfg.mask_token_id is not None:
        keys += [("spec-linear", B) for B in AUTO_LINEAR_BLOCKS if B <= block_size]
        keys += [("spec-quadratic", B) for B in AUTO_QUADRATIC_BLOCKS if B <= block_size]
    return keys


def scratch_slots(keys) -> int:
    return max(STRATEGIES[m].scratch(B) for m, B in keys)


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


@dataclass
class Cost:
    seconds: float = 0.0  # per step, running average
    measured: int = 0  # warm steps behind it (the profile's count as MEASURE)
    live: int = 0  # warm steps this generation
    last: int = -1  # index of the last step this candidate ran


@dataclass
class Acceptance:
    """Decayed counts of accepted draft tokens and of rejections (a step that stopped short), which
    drift back to the long-run rate while the family does not run: a family left because the text
    turned unpredictable is tried again once what was learnt about that text has faded."""
    accepted: float = 1.0  # a weak prior of a = 0.5, forgotten within a few steps
    rejected: float = 1.0
    total_accepted: float = 1.0  # the whole generation's counts (and the profile's prior)
    total_rejected: float = 1.0
    PRIOR = 2.0  # weight, in rejections, of the long-run rate in the recent counts

    @property
    def rate(self) -> float:
        return self.accepted / (self.accepted + self.rejected)

    @property
    def long_run(self) -> float:
        return self.total_accepted / (self.total_accepted + self.total_rejected)

    def step(self, decay: float, accepted: float = 0.0, rejected: float = 0.0):
        """One decode step: forget a little (towards the long-run rate), then add what it saw."""
        keep = (1 - decay) * self.PRIOR
        self.accepted = decay * self.accepted + keep * self.long_run + accepted
        self.rejected = decay * self.rejected + keep * (1 - self.long_run) + rejected
        self.total_accepted += accepted
        self.total_rejected += rejected

    def expected_tokens(self, B: int) -> float:
        a = min(self.rate, 1 - 1e-9)
        return (1 - a ** B) / (1 - a)


class AutoPolicy:
    MEASURE = 2  # warm steps a candidate runs before it competes
    COST_ALPHA = 0.1  # a candidate's own cost is a property of its shapes: it moves slowly
    SPEED_ALPHA = 0.5  # the machine's speed (other processes, clocks) moves fast
    DECAY = 0.85  # per step of the family: acceptance is a property of the last few dozen tokens
    EXPLORE_EVERY = 8
    EXPLORE_SHARE = 0.1  # of the decode time: a slow candidate is re-checked, never paid for long
    HYSTERESIS = 1.15  # a switch into quadratic starts with a one-token step: only switch for a clear gain
    OUTLIER = 2.0  # one step moves the speed estimate by at most this factor

    def __init__(self, keys, profile=None):
        self.keys = list(keys)
        self.cost = {k: Cost() for k in self.keys}
        self.acc = {f: Acceptance() for f in SPEC_FAMILIES}
        self.prior = set()
        self.profile = profile
        if profile is not None:
            for k, c in self.cost.items():
                p = profile.get(k)
                if p is not None:
                    c.seconds, c.measured = p["seconds"], self.MEASURE
                    self.prior.add(k)
            for f, a in self.acc.items():
                p = profile.get_acceptance(f)
                if p is not None:  # the last generation's rate, as a weak prior
                    a.accepted, a.rejected = a.PRIOR * p, a.PRIOR * (1 - p)
                    a.total_accepted, a.total_rejected = a.accepted, a.rejected
        self.speed = 1.0  # step times now / the costs' scale (a shared machine's slow spell: > 1)
        self.current = None
        self.explored = None  # the key chosen to explore in this step
        self.steps = 0
        self.seconds = self.explore_s = 0.0

    def tokens(self, key) -> float:
        mode, B = key
        return 1.0 if mode == "ar" else self.acc[mode].expected_tokens(B)

    def rate(self, key) -> float:
        c = self.cost[key]
        return self.tokens(key) / c.seconds if c.measured and c.seconds > 0 else 0.0

    def first(self):
        measured = [k for k in self.keys if self.cost[k].measured]
        return max(measured, key=self.rate) if measured else self.keys[0]

    def choose(self):
        self.steps += 1
        self.explored = None
        need = [k for k in self.keys if self.cost[k].measured < self.MEASURE]
        if need:  # measure on the fly, the current candidate first (no switch)
            self.current = self.current if self.current in need else need[0]
            return self.current
        best = max(self.keys, key=self.rate)
        cur = self.current
        if cur is not None and self.rate(best) < self.HYSTERESIS * self.rate(cur):
            best = cur
        self.current = best
        if self.steps % self.EXPLORE_EVERY == 0 and self.explore_s <= self.EXPLORE_SHARE * self.seconds:
            bar = self.rate(best)
            stale = [k for k in self.keys if k != best and k[1] / self.cost[k].seconds > bar]
            if stale:
                self.explored = min(stale, key=lambda k: self.cost[k].last)
                return self.explored
        return best

    def observe(self, key, tokens, seconds, cold, drafted=0):
        """A step of `key` produced `tokens` (accepted drafts + the bonus, before any EOS / budget
        cut) after verifying `drafted` draft tokens, in `seconds`."""
        mode, B = key
        c = self.cost[key]
        c.last = self.steps
        self.seconds += seconds
        if key == self.explored:
            self.explore_s += seconds
        for family, a in self.acc.items():
            if family == mode and drafted > 0:
                accepted = min(tokens - 1, drafted)
                a.step(self.DECAY, accepted, float(accepted < drafted))
            else:
                a.step(self.DECAY)
        if cold:  # a step that compiled or captured a graph says nothing about the replay cost
            return
        # Costs are kept at one scale and the machine's current speed apart: a slow spell that hits
        # whichever candidate is running then moves the speed, not that candidate's cost, so it
        # does not change which candidate wins (the speed cancels out of the comparison).
        if c.measured:
            ratio = min(max(seconds / c.seconds, self.speed / self.OUTLIER), self.speed * self.OUTLIER)
            self.speed += self.SPEED_ALPHA * (ratio - self.speed)
            c.seconds += self.COST_ALPHA * (seconds / self.speed - c.seconds)
        else:
            c.seconds = seconds / self.speed
        c.measured += 1
        c.live += 1

    def finish(self):
        """Persist the estimates this generation moved: the next one starts from them."""
        if self.profile is None:
            return
        fresh = {k: c for k, c in self.cost.items() if c.live >= (1 if k in self.prior else self.MEASURE)}
        self.profile.update({k: (c.seconds, self.tokens(k), c.live) for k, c in fresh.items()},
                            {f: a.long_run for f, a in self.acc.items() if a.total_accepted + a.total_rejected > 2 * a.PRIOR})
