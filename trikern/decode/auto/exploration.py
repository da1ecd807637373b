"""The auto policy's exploration budget: when a step may run a candidate other than the best one,
for what it tells about acceptance, and what doing so has cost.

Acceptance moves with the text, so a family not run for a while has a stale estimate. At most every
EVERY steps, and only while exploring has cost under `share()` of the decode time, the family not run
for longest runs a step with its best candidate among those that could win if a whole block were
accepted. What an exploration costs is the time it lost against the candidate it displaced for the
tokens it produced: a speculative step is never worse than one token, so exploring from cheap AR
steps on a CPU costs little, while counting its whole time would cap exploring at once (one step of
B = 16 is worth three of AR there) and leave a stale prior in charge for the whole generation. The
share follows how often this generation's explorations beat the setting they displaced: where one
setting wins throughout, refreshing the others is the whole gap between auto and that setting.

The hit rate behind that share starts from earlier generations' (hits, tries) on this device and
model, kept in the profile and weighed down each generation: whether exploring pays is also a
property of the machine (where AR wins outright, none does). The same rate sets how often a
generation that starts in AR probes a speculative family at its first step: a probe credit, kept in
the profile too, grows by the hit rate at each such start and pays one probe per whole unit, so at
a hit rate of 0.4 two starts in five probe (`probe_due`); below PROBE none does.

A periodic refresh needs REFRESH_LEFT tokens still to come (the driver says how many): an
exploration costs now and pays back only over the rest of the generation, so near its end, and in
short generations, the best estimate runs instead.

Within the same share, a step that accepted every draft is followed by one of the next larger block
size that could win (either family, the cheaper step, one whose first step is a steady one where
there is such): the counts say nothing past the block it filled, and waiting for the next refresh
leaves copy-like text to a block size too small for it; on such text every filled block doubles the
next, so B = 16 is reached in a few steps. A quadratic B = 2 step's one accepted draft is the
exception (see `observe`).
"""
from __future__ import annotations

from ..registry import FAMILIES, strategy


def family(key):
    """The speculative family of a (mode, block size) key; None for a one-token step."""
    return strategy(key).family


class Exploration:
    EVERY = 16  # steps between refreshes of the other family (replayed: 8 cost short and code-only
    # generations 2-4%, where one setting wins throughout, and gained nothing on mixed text)
    REFRESH_LEFT = 24  # tokens left below which a periodic refresh is not worth its cost: what it
    # learns pays only over the tokens still to come (replayed short generations: 0.97 -> 0.98x best)
    PROBE = 0.12  # the hit rate (earlier generations' included) below which a generation that starts in
    # AR does not probe at its first step: where AR wins outright the probe is pure cost
    SHARE = 0.2  # of the decode time lost to exploring, times its hit rate (`share`): a slow candidate
    # is re-checked, never paid for long

    def __init__(self, prior=None):
        """`prior`: (hits, tries[, probe credit]) of earlier generations' explorations on this device
        and model (the profile's, decayed), or None."""
        prior = tuple(prior or (0.0, 0.0))
        self.prior_hits, self.prior_tries = prior[:2]
        self.credit = prior[2] if len(prior) > 2 else 1.0  # no history: the first start in AR probes
        self.key = None  # the candidate explored by the current step(s)
        self.displaced = 0.0  # the rate (tokens / cost-scale second) of the candidate it displaced
        self.left = 0  # further steps of the same exploration
        self.last_run: dict = {}  # family (or mode) -> the last step index it ran
        self.saturated = 0  # the block size whose every draft the last step accepted (0: none)
        self.seconds = self.spent = 0.0  # decode time, and the part of it exploring lost
        self.hits = self.tries = 0  # explorations that beat the setting they displaced

    def share(self) -> float:
        """The share of decode time exploring may lose: SHARE scaled by how often this generation's
        explorations beat the setting they displaced (Laplace: half of it before any). Where one
        setting wins throughout (AR on a CPU without fast bf16, text that drafts poorly) the
        refreshes stop paying, and their cost is what keeps auto below that setting."""
        return self.SHARE * self.hit_rate()

    def hit_rate(self) -> float:
        """How often explorations beat the setting they displaced: this generation's and the earlier
        ones' (the profile's) counts, Laplace-smoothed (one half before any)."""
        return (self.hits + self.prior_hits + 1) / (self.tries + self.prior_tries + 2)

    def carried(self, keep: float) -> tuple[float, float, float]:
        """(hits, tries, probe credit) for the next generation's prior: this one's outcomes added to
        the prior's, which are weighed down by `keep` first (a machine or a kind of text changes)."""
        return self.prior_hits * keep + self.hits, self.prior_tries * keep + self.tries, self.credit

    def probe_due(self) -> bool:
        """At a generation's first step, in AR: whether it probes. Every such start earns the hit
        rate in credit and a probe spends one unit, so probes come as often as they have paid. A
        probe in every start cost each 32-token generation ~3% where AR wins outright (a 2-core
        EPYC capped to AVX2: hit rate ~0.4 from near-ties on code, every short generation probing);
        none at all leaves a machine whose first generations saw no draft in AR for good."""
        rate = self.hit_rate()
        if rate < self.PROBE:
            return False
        self.credit += rate
        if self.credit < 1.0:
            return False
        self.credit -= 1.0
        return True

    def continuing(self):
        """The key of an exploration that takes one more step, else None."""
        if not self.left:
            return None
        self.left -= 1
        return self.key

    def propose(self, step: int, best, keys, rate, seconds, left: int | None = None):
        """A candidate to run instead of `best` at step `step`, or None. `rate(k)` is a candidate's
        expected tokens per second, `seconds(k)` its cost. Only acceptance needs exploring (costs are
        known), and only candidates that could win if a whole block were accepted are worth it."""
        self.key = None
        if self.spent > self.share() * self.seconds:
            return None
        filled = self.saturated and best[1] <= self.saturated
        # The first step of a generation that starts in AR probes a family: the acceptance prior is
        # another text's, and without a probe a short generation never leaves AR (no refresh comes
        # while REFRESH_LEFT tokens are left).
        refresh = step % self.EVERY == 0 or (step == 1 and family(best) is None and self.probe_due())
        if not filled and not refresh:
            return None
        bar = rate(best)
        could = [k for k in keys if family(k) and k != best and k[1] / seconds(k) > bar]
        if filled:
            # The last step accepted every draft: nothing is known past its block, so a larger block
            # (either family) is tried now rather than at the next refresh. On copy-like text that
            # step is no loss, and it is what lets the long blocks that pay there take over.
            larger = [k for k in could if k[1] > self.saturated]
            if larger:  # the next block size up, its cheapest step: a filled B = 2 block says little
                # about 16 (jumping to the largest cost short code generations 5-10%, replayed)
                size = min(k[1] for k in larger)
                pick = [k for k in larger if k[1] == size]
                # ... whose first step is a steady one where there is such: a quadratic block grown
                # from a smaller one first verifies the old, shallower draft at the larger width (a
                # filled quadratic B = 2 sent code generations to B = 4 steps that gave B = 2's yield,
                # ~40% of their steps), and one entered from linear restarts.
                steady = [k for k in pick if not strategy(k).entry_steps(k[1], best)]
                return min(steady or pick, key=seconds)
        if refresh and (left is None or left >= self.REFRESH_LEFT):
            # One step of a family informs all its block sizes (the hazards of the first positions,
            # which decide most of every block's yield): refresh the family not run for longest
            # with its cheapest candidate that could win.
            other = [k for k in could if family(k) != family(best)]
            if other:
                stale = min((f for f in FAMILIES if any(family(k) == f for k in other)),
                            key=lambda f: self.last_run.get(f, -1))
                return min((k for k in other if family(k) == stale), key=seconds)
        return None

    def begin(self, key, displaced_rate: float, extra_steps: int):
        """Run `key` instead of a candidate of `displaced_rate`, for 1 + `extra_steps` steps
        (entering quadratic, the first step restarts; growing its block, it verifies the old,
        shorter draft)."""
        self.key, self.displaced, self.left = key, displaced_rate, extra_steps

    def observe(self, step: int, key, tokens: int, seconds: float, cold: bool, drafted: int, speed: float):
        """Account for a step (see `AutoPolicy.observe`); `speed` converts cost-scale seconds to now."""
        self.last_run[family(key) or key[0]] = step
        self.seconds += seconds
        if key == self.key and not cold:  # its regret: the time beyond what the displaced candidate needed
            needed = tokens * speed / self.displaced if self.displaced > 0 else 0.0
            self.spent += max(0.0, seconds - needed)
            if drafted:  # a step that verified drafts (not a quadratic restart): did it beat the incumbent?
                self.tries += 1
                self.hits += seconds <= needed
        # The block it filled; but one accepted draft of a block entered by a restart (quadratic B = 2)
        # sets off no growth: it says little past itself, and the growth it set off went to the steady
        # linear B = 4 and back into quadratic through a restart, cycle after cycle (code prompts on a
        # 2-core EPYC, 2026-12-07: auto 0.86-0.88x the best fixed setting). Replayed over four CPUs'
        # costs (tests/test_decode_auto_replay.py): 64- / 32-token code 0.961 / 0.949 -> 0.974 / 0.982,
        # all 32-token 0.991 -> 0.981, mixed 1.083 -> 1.044 (copy-like text reaches long blocks later).
        one_restarted = drafted == 1 and strategy(key).entry_steps(key[1], None)
        self.saturated = drafted + 1 if drafted and tokens > drafted and not one_restarted else 0
