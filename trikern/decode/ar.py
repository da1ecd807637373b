"""AR decoding (SPEC §4.1): causal prefill, then one token per causal forward."""
from __future__ import annotations

from typing import Iterator

import torch

from ..kernels import CAUSAL
from ..sampling import sample
from .common import DecodeContext
from .loop import Emitter


def ar_step(ctx: DecodeContext, token: torch.Tensor) -> torch.Tensor:
    """Feed one token [1] at the cache end, commit its K/V, return the next token [1] (no sync)."""
    pos = ctx.cache.length.reshape(1)
    logits = ctx.model(token, pos, ctx.cache, CAUSAL, write_cache=True)
    ctx.cache.commit(1)
    g = ctx.gen
    return sample(logits, g.temperature, g.top_k, g.top_p, ctx.generator)


@torch.inference_mode()  # wraps each resume of the generator, not the caller's code
def decode_ar(ctx: DecodeContext, prompt_ids: torch.Tensor) -> Iterator[list[int]]:
    g = ctx.gen
    if ctx.max_new_tokens == 0:
        return
    logits = ctx.prefill(prompt_ids)
    token = sample(logits[None], g.temperature, g.top_k, g.top_p, ctx.generator)
    em = Emitter(ctx)
    while True:
        out, done, forced = em.take(token.tolist())
        yield out
        if done:
            return
        if forced:  # thinking budget: the end-think token replaces the sampled one
            token = torch.full_like(token, g.end_think_id)
        token = ar_step(ctx, token)
        ctx.stats.forwards += 1
