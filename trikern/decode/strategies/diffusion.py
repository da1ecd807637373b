"""Block diffusion (docs/ALGORITHMS.md): fill a block of masks over a few bidirectional passes, then commit.

From the shared state (the pending token at n = cache length, its K/V not in the cache yet) a step:

1. `[pending, M x (B-1)]` at n .. n+B-1 (kernels.draft_tree);
2. denoise passes (`denoise`: one bidirectional forward, cache read-only, then kernels.reveal)
   until no mask is left -- at most B-1 passes, since each reveals at least one;
3. commit (`commit`: one causal forward over the block writing its K/V, the next pending token from the
   logit of the block's last position, mask id excluded) -- skipped when the block ends the
   generation (EOS, budget), so no forward is spent on K/V nobody reads.

The step produces x_1 .. x_{B-1} and the next pending token: B tokens. Host syncs: one small read after
every pass (the block's tokens and mask flags, to stop as soon as no mask is left, so `forwards`
counts only passes that reveal something) and the pending token after the commit. Each pass is itself
host-sync free and captured as a CUDA graph per block size. Diffusion is not lossless (it does not
verify against the causal pass), so `mode="auto"` never picks it.

Sampling (T > 0): Gumbel-max candidates at the request's temperature / top-k / top-p, the
confidence from the model's own distribution (kernels/reveal.py).
"""
from __future__ import annotations

import torch

from ... import kernels as K
from ...sampling import probs, sample
from .base import StepResult, Strategy
from .device import require_mask_id, without_mask


class Diffusion(Strategy):
    mode = "diffusion"
    lossless = False  # its tokens are the draft's: not AR's distribution, never an auto candidate

    def __init__(self, ctx, B):
        super().__init__(ctx, B)
        self.mask_id, self.mask_index = require_mask_id(ctx, self.mode)
        self.backend = ctx.model.backend
        self.masked0 = torch.arange(B, device=ctx.device) > 0

    def first_token(self, logits):
        return super().first_token(without_mask(logits, self.mask_index))

    def block(self, pending):
        """pending [1] -> (tokens [B], masked [B] bool, positions [B])."""
        tokens, pos = K.draft_tree(pending, self.ctx.cache.length, self.B, self.mask_id, backend=self.backend)
        return tokens, self.masked0.clone(), pos

    def denoise(self, tokens, masked, pos):
        """One bidirectional pass + reveal -> (tokens, masked)."""
        ctx, g = self.ctx, self.ctx.gen
        logits = without_mask(ctx.model(tokens, pos, ctx.cache, K.BIDIRECTIONAL, write_cache=False),
                              self.mask_index)
        p = noise = None
        if g.temperature > 0:
            p = probs(logits, g.temperature, g.top_k, g.top_p)
            noise = torch.empty_like(p).exponential_(1.0, generator=ctx.generator)
        return K.reveal(tokens, masked, logits, g.threshold, self.mask_id, p, noise, backend=self.backend)

    def commit(self, tokens, pos):
        """Causal pass over the whole block, commit it -> next pending token [1]."""
        ctx, g = self.ctx, self.ctx.gen
        logits = ctx.model(tokens, pos, ctx.cache, K.CAUSAL, write_cache=True, logits_index=self.B - 1)
        ctx.cache.commit(self.B)
        return sample(without_mask(logits[None], self.mask_index), g.temperature, g.top_k, g.top_p,
                      ctx.generator)

    def step(self, run, timer, em):
        B = self.B
        # A revealed token never changes: once the positions the budget can still emit are
        # revealed, further passes would only fill tokens nobody reads.
        needed = min(B, 1 + em.room)
        tokens, masked, pos = self.block(self.pending)
        host, passes = [], 0
        for _ in range(B - 1):
            tokens, masked = run(("denoise", B), self.denoise, tokens, masked, pos)
            timer.mark("denoise")
            host = torch.cat([tokens, masked.long()]).tolist()  # one read per pass
            passes += 1
            if not any(host[B:B + needed]):
                break
        filled = host[1:B]
        if any(host[B:]) or em.ends(filled):  # masks left only past the budget: the generation ends here
            return StepResult(filled[:needed - 1], passes)
        self.pending = run(("commit", B), self.commit, tokens, pos)
        timer.mark("commit")
        return StepResult(filled + self.pending.tolist(), passes + 1)
