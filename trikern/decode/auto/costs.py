"""Step costs as the auto policy keeps them, and the order of work that stored costs must respect."""
from __future__ import annotations

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
