"""Step costs as the auto policy keeps them (`CostModel`), and the order of work that stored costs
must respect."""
from __future__ import annotations

import math
from dataclasses import dataclass

from ..registry import strategy


@dataclass
class Cost:
    seconds: float = 0.0  # per step, running average
    measured: int = 0  # warm steps behind it (the profile's count as MEASURE)
    live: int = 0  # warm steps this generation


def less_work(a, b) -> bool:
    """Whether a step of `a` does less work than one of `b`: a one-token step (AR: one forward of
    one row) less than any speculative one, a smaller block less than a larger one of the same mode."""
    one_a, one_b = strategy(a).family is None, strategy(b).family is None
    return a != b and ((one_a and not one_b) or (a[0] == b[0] and a[1] < b[1]))


def implausible(costs: dict, fixed=frozenset(), slack: float = 1.5) -> set:
    """Keys whose cost breaks the order of work by more than `slack` (a step that does less work
    costing more), fewest first: the key in most such pairs goes, until none is left. `fixed`
    keys (measured live) are never the ones to go."""
    pairs = [(a, b) for a in costs for b in costs if less_work(a, b) and costs[a] > slack * costs[b]]
    bad: set = set()
    while pairs:
        count: dict = {}
        for a, b in pairs:
            for k in (a, b):
                if k not in fixed:
                    count[k] = count.get(k, 0) + 1
        if not count:
            break
        worst = max(count, key=count.get)
        bad.add(worst)
        pairs = [(a, b) for a, b in pairs if worst not in (a, b)]
    return bad


class CostModel:
    """Seconds per step of every candidate, at one scale, and the machine's current speed against it.

    A candidate's cost is a slow running average of its warm steps (a property of its shapes); the
    speed is a fast estimate of how much slower than that scale the machine runs now (other
    processes, clocks), so a slow spell moves the speed, not whichever candidate ran during it.
    Costs come from the persisted profile (`stored`: priors, confirmed or overturned by their first
    live steps) or are measured on the fly (the fastest of a candidate's first MEASURE steps).
    """
    MEASURE = 2  # warm steps a candidate runs before it competes
    COST_ALPHA = 0.1  # a candidate's own cost is a property of its shapes: it moves slowly
    SPEED_ALPHA = 0.5  # the machine's speed (other processes, clocks) moves fast
    OUTLIER = 2.0  # one step moves the speed estimate by at most this factor
    CONFIRM = 2  # live warm steps that confirm (or overturn) a cost from the profile
    TRUST = 2.0  # a stored cost further than this from its live steps is replaced by them
    PERSIST = 0.25  # how far one generation moves a confirmed stored cost (`fresh_seconds`)

    def __init__(self, keys, stored: dict | None = None):
        self.keys = list(keys)
        self.cost = {k: Cost() for k in self.keys}
        self.prior: set = set()  # keys whose cost came from the profile (until live steps overturn it)
        # A profile measured while the machine was busy can hold a cost that breaks the order of
        # work (an AR step dearer than a speculative one): such a prior is measured afresh.
        self.distrusted: set = implausible(stored or {})
        for k, seconds in (stored or {}).items():
            if k not in self.distrusted:
                self.cost[k].seconds, self.cost[k].measured = seconds, self.MEASURE
                self.prior.add(k)
        self.loaded = {k: self.cost[k].seconds for k in self.prior}  # the profile's figures, its scale
        self.samples: dict = {k: [] for k in self.keys}  # warm steps (cost scale) being measured or confirmed
        self.ratios: dict = {}  # confirmed priors: live / stored seconds
        self.check = None  # a second prior to confirm before believing the first (its ratio was far from 1)
        self.speed = 1.0  # step times now / the costs' scale (a shared machine's slow spell: > 1)
        self.overturned: set = set()  # priors that live steps replaced

    def seconds(self, key) -> float:
        """The cost of a step of `key` at the costs' scale; 0 while it has no figure."""
        c = self.cost[key]
        return c.seconds if c.measured else 0.0

    def unmeasured(self) -> list:
        return [k for k in self.keys if self.cost[k].measured < self.MEASURE]

    def to_confirm(self):
        """A second stored cost that must be confirmed before the first is believed, or None."""
        return self.check if self.check in self.prior and self.check not in self.ratios else None

    def on_common_scale(self) -> bool:
        """Costs measured on the fly share no scale with stored ones until one stored cost is confirmed."""
        return not self.prior or bool(self.ratios)

    def observe(self, key, seconds: float):
        """A warm step of `key` took `seconds` (steps that compiled, captured or only restarted are
        not what a step costs and never reach here)."""
        c = self.cost[key]
        c.live += 1
        if c.measured < self.MEASURE:  # measuring: the fastest of its first steps (a busy moment only slows)
            self.samples[key].append(seconds / self.speed)
            c.seconds, c.measured = min(self.samples[key]), c.measured + 1
            return
        if key in self.prior and c.live <= self.CONFIRM:
            self.confirm(key, seconds)
            return
        # The speed cancels out of the comparison between candidates, so keeping it apart means a
        # slow spell does not change which one wins.
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
        # Within TRUST of the others the stored cost is not wrong, only off: its live steps, on the
        # profile's scale, are the better figure (a profile measured under load is off by a different
        # factor for each candidate, and a quarter too cheap decides whether a wide block "could win").
        if 1 / self.TRUST <= self.ratios[key] / ref <= self.TRUST:
            c.seconds *= self.ratios[key] / ref
            self.ratios[key] = ref
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

    def fresh(self) -> dict:
        """The costs this generation's live steps stand behind (worth persisting)."""
        return {k: c for k, c in self.cost.items() if c.live >= (self.CONFIRM if k in self.prior else self.MEASURE)}

    def fresh_seconds(self) -> dict:
        """`fresh()`'s costs on the profile's own scale, to persist. Costs and speed share one free
        factor (twice the costs at half the speed predict the same steps), and noise moves it: the
        candidates that ran drift with it, those that did not keep the old scale, and over many
        generations the profile's order of the two goes wrong (seen: AR and linear B = 8 persisted at
        0.4x their tuned figures, linear B = 4, not run lately, at 0.5x, so B = 8 looked cheaper than
        B = 4). So the fresh costs of confirmed stored candidates keep their geometric mean on the
        profile's scale; every cost measured here keeps its ratio.

        And what moves between confirmed stored candidates moves the stored figure by PERSIST of the
        way (in log): a generation's live figures carry its noise (the first two steps decide a
        confirmed cost), and stored wholesale they made a random walk with nothing to pull it back
        (seen: after ~80 bench generations linear B = 4 at 1.14x its tuned cost and B = 8 at 0.92x,
        their order swapped, and auto at 0.86x linear B = 4 on code prompts). A cost the live steps
        overturned is wrong, not noisy: its live figure is stored whole."""
        fresh = self.fresh()
        confirmed = [k for k in fresh if k in self.prior and k not in self.overturned]  # (prior: within loaded)
        anchors = [math.log(fresh[k].seconds / self.loaded[k]) for k in confirmed]
        g = math.exp(sum(anchors) / len(anchors)) if anchors else 1.0
        out = {k: c.seconds / g for k, c in fresh.items()}
        for k in confirmed:
            out[k] = self.loaded[k] * (out[k] / self.loaded[k]) ** self.PERSIST
        return out
