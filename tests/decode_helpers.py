"""Shared helpers of the decode tests: run one generation in any mode, seeded prompts."""
from __future__ import annotations

import torch

from trikern.decode import decode
from trikern.decode.common import DecodeContext, GenerationConfig


def run(model, prompt, mode, **kw):
    """(tokens, stats, per-step chunks) of one generation."""
    ctx = DecodeContext(model, GenerationConfig(**kw), len(prompt), mode)
    chunks = list(decode(ctx, torch.as_tensor(prompt, dtype=torch.long), mode))
    return [t for c in chunks for t in c], ctx.stats, chunks


def prompts(count, vocab, seed=0, lengths=(1, 3, 7, 12, 20)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(count)]


class Cycle:
    """A scripted policy (driver.policy_for's place): the keys in turn, one per step."""

    def __init__(self, keys):
        self.keys, self.i = list(keys), 0
        self.drafted = []  # per step: draft tokens the step verified

    def first(self):
        return self.keys[0]

    def choose(self):
        self.i += 1
        return self.keys[self.i % len(self.keys)]

    def observe(self, key, tokens, seconds, cold, drafted=0):
        self.drafted.append((key, drafted))

    def finish(self):
        pass


def run_cycle(monkeypatch, model, prompt, keys, **kw):
    """run() in mode "auto" (its candidates' cache) with the strategy switching every step through `keys`."""
    from trikern.decode import driver  # noqa: PLC0415

    policy = Cycle(keys)
    monkeypatch.setattr(driver, "policy_for", lambda ctx, mode: policy)
    return (*run(model, prompt, "auto", **kw), policy)
