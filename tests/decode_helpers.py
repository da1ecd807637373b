"""Shared helpers of the decode tests: run one generation in any mode, seeded prompts."""
from __future__ import annotations

import os

import pytest
import torch
from util import random_model, tiny_config

from trikern.decode import GenerationConfig, decode, drive, new_context


def run(model, prompt, mode, policy=None, **kw):
    """(tokens, stats, per-step chunks) of one generation; `policy`: one of the tests' own, in the
    place of the mode's."""
    ctx = new_context(model, GenerationConfig(**kw), len(prompt), mode)
    ids = torch.as_tensor(prompt, dtype=torch.long)
    chunks = list(decode(ctx, ids, mode) if policy is None else drive(ctx, ids, policy))
    return [t for c in chunks for t in c], ctx.stats, chunks


def torch_and_triton_models():
    """The same one-layer random model with backend="torch" and backend="triton" (skips on a CPU run
    without TRITON_INTERPRET=1, which tests/conftest.py sets)."""
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("backend='triton' on CPU needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    cfg = tiny_config(num_hidden_layers=1, max_position_embeddings=64)
    return random_model(cfg, seed=6, backend="torch"), random_model(cfg, seed=6, backend="triton")


def prompts(count, vocab, seed=0, lengths=(1, 3, 7, 12, 20)):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, vocab, (lengths[i % len(lengths)],), generator=g).tolist() for i in range(count)]


class Cycle:
    """A scripted policy: the keys in turn, one per step."""

    def __init__(self, keys):
        self.keys, self.i = list(keys), 0
        self.drafted = []  # per step: draft tokens the step verified

    def first(self):
        return self.keys[0]

    def choose(self, left=None):
        self.i += 1
        return self.keys[self.i % len(self.keys)]

    def observe(self, key, tokens, seconds, cold, drafted=0):
        self.drafted.append((key, drafted))

    def finish(self):
        pass


def run_cycle(model, prompt, keys, **kw):
    """run() in mode "auto" (its candidates' cache) with the strategy switching every step through `keys`."""
    policy = Cycle(keys)
    return (*run(model, prompt, "auto", policy, **kw), policy)
