"""Block diffusion (SPEC §4.2): fill a block of masks over a few bidirectional passes, then commit.

State between blocks: the seed (an AR token, already emitted; its K/V not in the cache yet) at
n = cache length. A block:

1. `[seed, M x (B-1)]` at n .. n+B-1 (kernels.draft_tree);
2. denoise passes (`Diffusion.denoise`: one bidirectional forward, cache read-only, then
   kernels.reveal) until no mask is left -- at most B-1 passes, since each reveals at least one;
3. commit (`Diffusion.commit`: one causal forward over the block writing its K/V, commit, the
   next seed from the logit of the last kept position, mask id excluded).

Host syncs: one small read after every forward, between passes -- the block's tokens and mask flags
after a denoise pass (to stop as soon as no mask is left, so no forward is spent on a finished
block and `forwards` counts only passes that reveal something), the seed after a commit. Each pass
(forward + reveal, forward + commit) is itself host-sync free and captured as a CUDA graph per
block size. The filled tokens x_1 .. x_{B-1} are yielded before the commit, so a block that ends
the generation (EOS, budget) is never committed. The prefill's seed is the first token, as in AR.

Sampling (T > 0): Gumbel-max candidates at the request's temperature / top-k / top-p, the
confidence from the model's own distribution (kernels/reveal.py). `forwards` = denoise passes +
commits; no acceptance lengths.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .. import kernels as K
from ..sampling import probs, sample
from .common import DecodeContext
from .loop import Emitter, PhaseTimer, StepRunner, check_room, require_mask_id, without_mask


class Diffusion:
    def __init__(self, ctx: DecodeContext):
        self.ctx = ctx
        self.B = ctx.block_size
        self.mask_id, self.mask_index = require_mask_id(ctx, "diffusion")
        self.backend = ctx.model.backend
        self.masked0 = torch.arange(self.B, device=ctx.device) > 0

    def block(self, seed):
        """seed [1] -> (tokens [B], masked [B] bool, positions [B])."""
        tokens, pos = K.draft_tree(seed, self.ctx.cache.length, self.B, self.mask_id, backend=self.backend)
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

    def commit(self, tokens, pos, count):
        """Causal pass over the block, keep its first `count` ([] int64) entries -> next seed [1]."""
        ctx, g = self.ctx, self.ctx.gen
        logits = ctx.model(tokens, pos, ctx.cache, K.CAUSAL, write_cache=True, logits_index=(count - 1).reshape(1))
        ctx.cache.commit(count)
        return sample(without_mask(logits, self.mask_index), g.temperature, g.top_k, g.top_p, ctx.generator)


@torch.inference_mode()  # wraps each resume of the generator, not the caller's code
def decode_diffusion(ctx: DecodeContext, prompt_ids: torch.Tensor) -> Iterator[list[int]]:
    g = ctx.gen
    if ctx.max_new_tokens == 0:
        return
    dif = Diffusion(ctx)
    B, run, timer = dif.B, StepRunner(ctx), PhaseTimer(ctx)
    logits = ctx.prefill(prompt_ids)
    seed = sample(without_mask(logits[None], dif.mask_index), g.temperature, g.top_k, g.top_p, ctx.generator)
    em = Emitter(ctx)
    while True:
        out, done, forced = em.take(seed.tolist())
        timer.flush()  # the commit's events are complete after the read above
        yield out
        if done:
            return
        if forced:
            seed = torch.full_like(seed, g.end_think_id)
        check_room(ctx, em.cache_length(), B)
        tokens, masked, pos = dif.block(seed)
        host = []
        for _ in range(B - 1):
            timer.start()
            tokens, masked = run(("denoise", B), dif.denoise, tokens, masked, pos)
            timer.mark("denoise")
            host = torch.cat([tokens, masked.long()]).tolist()  # one read per pass
            timer.flush()
            ctx.stats.forwards += 1
            if not any(host[B:]):
                break
        out, done, forced = em.take(host[1:B]) if B > 1 else ([], False, False)
        if out:
            yield out
        if done:
            return
        count = 1 + len(out)
        if forced:  # the forced token replaces its position; the causal commit ignores what follows
            tokens = tokens.clone()
            tokens[count - 1] = g.end_think_id
        timer.start()
        seed = run(("commit", B), dif.commit, tokens, pos, torch.tensor(count, device=ctx.device))
        timer.mark("commit")
        seed = seed.clone()  # its read is the next iteration's em.take
        ctx.stats.forwards += 1
