"""What one speculative family's drafts are worth on the current text: per-position hazards from
decayed counts of recent steps, shrunk towards the generation's (and the profile's) long run."""
from __future__ import annotations


class Acceptance:
    """What one speculative family's drafts are worth on the current text.

    Per draft position k = 1, 2, ... it keeps the hazard h_k = P(draft k is rejected | drafts
    1 .. k-1 were accepted), from decayed counts of the steps that reached k and of those that were
    rejected there. A step at block size B then yields 1 + sum_{k<B} prod_{j<=k} (1 - h_j) tokens
    in expectation, so one step informs every block size of its family. Hazards are not constant
    in k: a draft is usually right for a couple of tokens, and text that survives those (a copy, a
    table row) tends to be accepted to the end of the block, which a single acceptance rate cannot
    express and which is what makes long blocks pay.

    The recent counts shrink towards the generation's long-run hazard at k, so a family not run
    for a while falls back to it; a position not reached lately falls back to it too, but to no
    less than the recent hazard of the last position reached (`hazards`). The long-run hazard of a
    position with little evidence leans on position k-1's, so positions never reached inherit the
    last one measured (a constant hazard, the geometric tail).
    """

    START = 0.5  # hazard before any evidence
    PRIOR = 3.0  # weight, in steps, of the long-run hazard in the recent estimate: one or two poor
    # steps (the first drafts of a generation often are) must not outvote the long run (replayed
    # on three CPUs' costs with +-15% jitter: short code generations' worst 0.87 -> 0.93x best)
    REACHED = 0.5  # recent (decayed) steps at a position for it to count as reached lately
    SMOOTH = 2.0  # weight, in steps, of position k-1's long-run hazard in position k's

    def __init__(self, horizon: int = 1, prior=None, weight: float = 4.0):
        """`horizon`: the most drafts a step verifies (largest block size - 1); `prior`: long-run
        hazards per position from an earlier generation (the profile), held as `weight` steps each."""
        self.horizon = horizon
        self.prior, self.weight = list(prior or ()), weight
        # Recent (decayed) counts are kept undecayed, times `scale` (the decay since they began): a
        # step that saw nothing of this family (every AR step) then costs one multiplication.
        self.reach: list[float] = []  # recent steps that reached position k+1, / scale
        self.reject: list[float] = []  # recent steps rejected at position k+1, / scale
        self.scale = 1.0
        self.total_reach: list[float] = []  # this generation's counts
        self.total_reject: list[float] = []
        self._survival: list[float] | None = None
        self._long: dict = {}  # n -> long_run(n): it moves only with this family's evidence, and the
        # policy asks for it every step (the per-step policy cost is paid on the AR steps it competes with)

    def long_run(self, n: int | None = None) -> list[float]:
        """Long-run hazards of positions 1 .. n (default: as far as there is evidence): this
        generation's counts shrunk towards the prior's hazard, or where it has none, position k-1's."""
        if (hit := self._long.get(n)) is None:
            hit = self._long[n] = self._long_run(n)
        return list(hit)

    def _long_run(self, n: int | None) -> list[float]:
        out, prev = [], self.START
        for k in range(max(len(self.total_reach), len(self.prior)) if n is None else n):
            reach = self.total_reach[k] if k < len(self.total_reach) else 0.0
            rej = self.total_reject[k] if k < len(self.total_reach) else 0.0
            base, w = (self.prior[k], self.weight) if k < len(self.prior) else (prev, self.SMOOTH)
            prev = (rej + w * base) / (reach + w)
            out.append(prev)
        return out

    def hazards(self, n: int) -> list[float]:
        """Current hazards of draft positions 1 .. n: the recent counts shrunk towards the long run.
        Past the last position that recent steps reached, the long run counts for no less than that
        position's recent hazard: the long-run tail was learnt on text that ran to the end of the
        block, and on text whose drafts now stop after a few tokens it would promise long blocks a
        tail that no recent step has shown (a mixture of the two kinds of text is neither)."""
        out, floor, scale = [], 0.0, self.scale
        for k, h in enumerate(self.long_run(n)):
            reach = self.reach[k] * scale if k < len(self.reach) else 0.0
            rej = self.reject[k] * scale if k < len(self.reach) else 0.0
            reached = reach >= self.REACHED
            out.append((rej + self.PRIOR * (h if reached else max(h, floor))) / (reach + self.PRIOR))
            if reached:  # reach only falls with k: once a position is not reached, none after it is
                floor = out[-1]
        return out

    @property
    def evidence(self) -> float:
        """Steps of this generation that verified a draft."""
        return self.total_reach[0] if self.total_reach else 0.0

    def step(self, decay: float, drafted: int = 0, accepted: int = 0):
        """One decode step (of any strategy): forget a little, then add what it saw -- `accepted` of
        `drafted` drafts (a step of this family; 0 drafted: no evidence)."""
        self.scale *= decay
        if self.scale < 1e-30:  # fold it in before the unscaled counts overflow
            self.reach = [x * self.scale for x in self.reach]
            self.reject = [x * self.scale for x in self.reject]
            self.scale = 1.0
        if drafted > 0:
            reached, one = min(accepted + 1, drafted), 1.0 / self.scale
            while len(self.reach) < reached:
                for counts in (self.reach, self.reject, self.total_reach, self.total_reject):
                    counts.append(0.0)
            for k in range(reached):
                self.reach[k] += one
                self.total_reach[k] += 1
            if accepted < drafted:
                self.reject[accepted] += one
                self.total_reject[accepted] += 1
            self._long.clear()
        self._survival = None

    @classmethod
    def pooled(cls, parts: list["Acceptance"]) -> "Acceptance":
        """One Acceptance holding the generation counts of `parts` (same prior): several sequences'
        evidence taken as one generation's (batch/auto.py)."""
        out = cls(max(p.horizon for p in parts), parts[0].prior, parts[0].weight)
        n = max(len(p.total_reach) for p in parts)
        out.total_reach = [sum(p.total_reach[k] for p in parts if k < len(p.total_reach)) for k in range(n)]
        out.total_reject = [sum(p.total_reject[k] for p in parts if k < len(p.total_reject)) for k in range(n)]
        return out

    def long_run_tokens(self, B: int) -> float:
        """Expected tokens of a step at block size B under the long-run hazards alone: where the
        current estimate of a family not run lately goes as its recent counts fade."""
        return tokens_by_drafts(self.long_run(B - 1))[B - 1]

    def expected_tokens(self, B: int) -> float:
        if self._survival is None or len(self._survival) < B:
            self._survival = tokens_by_drafts(self.hazards(max(B - 1, self.horizon)))
        return self._survival[B - 1]


def tokens_by_drafts(hazards) -> list[float]:
    """[k] = expected tokens of a step with k drafts under per-position `hazards`: 1 + the survival
    probabilities of positions 1 .. k."""
    alive, total, cum = 1.0, 1.0, [1.0]
    for h in hazards:
        alive *= 1 - h
        total += alive
        cum.append(total)
    return cum
