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
