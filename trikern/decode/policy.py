"""Which strategy (mode, block size) runs the next step: one fixed choice, or `mode="auto"`.

`auto` picks, before every step, the candidate with the highest expected tokens per second =
expected tokens per step / expected seconds per step. Both are running estimates (exponential
moving averages) of the steps the generation actually ran, seeded by the persisted step-cost
profile (profile.py) when there is one; a candidate with no estimate yet is measured by running it
(a few real steps, so the exploration still produces tokens). At most every EXPLORE_EVERY steps,
and only while exploring has cost under EXPLORE_SHARE of the decode time, the candidate not run for
longest among those that could beat the current one if a whole block were accepted runs once, so
estimates of modes not chosen stay current (acceptance moves with the text).

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

    def observe(self, key, tokens, seconds, cold):
        pass

    def finish(self):
        pass


@dataclass
class Estimate:
    tokens: float = 0.0  # tokens per step
    seconds: float = 0.0  # seconds per step
    measured: int = 0  # warm steps seen (this generation or the profile's)
    live: int = 0  # warm steps seen in this generation
    prior: bool = False  # started from the persisted profile
    last: int = -1  # index of the last step this candidate ran

    @property
    def rate(self) -> float:
        return self.tokens / self.seconds if self.measured and self.seconds > 0 else 0.0


class AutoPolicy:
    ALPHA = 0.3  # weight of the newest step: acceptance changes within a few steps of new text
    MEASURE = 2  # warm steps a candidate runs before it competes
    EXPLORE_EVERY = 8
    EXPLORE_SHARE = 0.05  # of the decode time: a slow candidate is re-checked, never paid for long
    HYSTERESIS = 1.05  # switching drops quadratic's drafts: only switch for a clear gain
    REFRESH = 8  # live steps after which a candidate's persisted estimate is rewritten

    def __init__(self, keys, profile=None):
        self.keys = list(keys)
        self.est = {k: Estimate() for k in self.keys}
        self.profile = profile
        if profile is not None:
            for k, e in self.est.items():
                prior = profile.get(k)
                if prior is not None:
                    e.tokens, e.seconds, e.measured = prior["tokens"], prior["seconds"], self.MEASURE
                    e.prior = True
        self.current = None
        self.steps = 0
        self.explored = None  # the key chosen to explore in this step
        self.seconds = self.explore_s = 0.0

    def first(self):
        measured = [k for k in self.keys if self.est[k].measured]
        return max(measured, key=lambda k: self.est[k].rate) if measured else self.keys[0]

    def choose(self):
        self.steps += 1
        need = [k for k in self.keys if self.est[k].measured < self.MEASURE]
        if need:  # measure on the fly, the current candidate first (no switch)
            self.current = self.current if self.current in need else need[0]
            return self.current
        best = max(self.keys, key=lambda k: self.est[k].rate)
        cur = self.current
        if cur is not None and self.est[best].rate < self.HYSTERESIS * self.est[cur].rate:
            best = cur
        self.current, self.explored = best, None
        if self.steps % self.EXPLORE_EVERY == 0 and self.explore_s <= self.EXPLORE_SHARE * self.seconds:
            stale = [k for k in self.keys if k != best and k[1] / self.est[k].seconds > self.est[best].rate]
            if stale:
                self.explored = min(stale, key=lambda k: self.est[k].last)
                return self.explored
        return best

    def observe(self, key, tokens, seconds, cold):
        e = self.est[key]
        e.last = self.steps
        self.seconds += seconds
        if key == self.explored:
            self.explore_s += seconds
        if cold:  # a step that compiled or captured a graph says nothing about the replay cost
            return
        if e.measured == 0:
            e.tokens, e.seconds = float(tokens), seconds
        else:
            e.tokens += self.ALPHA * (tokens - e.tokens)
            e.seconds += self.ALPHA * (seconds - e.seconds)
        e.measured += 1
        e.live += 1

    def finish(self):
        """Persist what was measured: new candidates, and refreshed ones that ran a while."""
        if self.profile is not None:
            self.profile.update({k: e for k, e in self.est.items()
                                 if e.live >= self.MEASURE and (not e.prior or e.live >= self.REFRESH)})
