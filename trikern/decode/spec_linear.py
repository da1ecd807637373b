"""Linear self-speculation (SPEC §4.3): one bidirectional draft pass, one causal verify pass.

State between steps: the seed (a verified token, already emitted, whose K/V are not in the cache
yet) at position n = cache length. A step:

1. draft:  `[seed, M x (B-1)]` at n .. n+B-1, bidirectional, cache read-only, draft LoRA on (when
   loaded and enabled); d_i = argmax (or a sample from q_i) at position i >= 1, the mask id
   excluded. Skipped when B = 1 (nothing to draft: the step is then one AR forward).
2. verify: `[seed, d_1 .. d_{B-1}]`, causal, writes B scratch entries.
3. kernels.verify: greedy rule at T = 0, standard speculative sampling against q at T > 0;
   commits seed + accepted drafts (c + 1 entries, exactly AR's K/V), emits d_1 .. d_c plus the
   bonus, and the bonus is the next seed.

Stats: forwards = 2 per step (1 when B = 1); `acceptance_lengths[c + 1] += 1` per step, i.e. the
number of tokens a step produced (matched drafts + the bonus), counted before the EOS / budget
cut. The first token comes from the prefill, as in AR.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .. import kernels as K
from ..sampling import sample
from .common import DecodeContext
from .loop import (Emitter, PhaseTimer, StepRunner, check_room, choose, produced, require_mask_id,
                   verifier_inputs, without_mask)


class LinearSpec:
    """The device side of one generation: `draft` and `verify` are host-sync free."""

    def __init__(self, ctx: DecodeContext):
        self.ctx = ctx
        self.B = ctx.block_size
        self.mask_id, self.mask_index = require_mask_id(ctx, "spec-linear")
        self.backend = ctx.model.backend
        self.draft_rows = torch.arange(1, self.B, device=ctx.device)

    def chunk(self, seed):
        return K.draft_tree(seed, self.ctx.cache.length, self.B, self.mask_id, backend=self.backend)

    def draft(self, seed):
        """seed [1] -> (drafts [B-1], q [B-1, V] or None)."""
        ctx = self.ctx
        tokens, pos = self.chunk(seed)
        logits = ctx.model(tokens, pos, ctx.cache, K.BIDIRECTIONAL, write_cache=False,
                           lora=ctx.gen.draft_lora, logits_index=self.draft_rows)
        return choose(ctx, without_mask(logits, self.mask_index))

    def verify(self, seed, drafts, q):
        """-> (tokens [B] padded with -1, count [], next seed [1]); commits the accepted chain."""
        ctx, cache = self.ctx, self.ctx.cache
        _, pos = self.chunk(seed)
        chain = torch.cat([seed, drafts])
        logits = ctx.model(chain, pos, cache, K.CAUSAL, write_cache=True)
        target, u, e = verifier_inputs(ctx, logits, drafts.shape[0])
        tokens, count = K.verify(drafts, target, q, u, e, cache.k, cache.v, cache.length, stride=1,
                                 backend=self.backend)
        return tokens, count, tokens.gather(0, (count - 1).reshape(1))

    def empty_draft(self, seed):
        """B = 1: no drafts; q an empty [0, V] under sampling so verify uses the sampled rule."""
        V = self.ctx.cfg.vocab_size
        drafts = seed.new_empty(0)
        q = None if self.ctx.gen.temperature <= 0 else torch.empty(0, V, device=seed.device)
        return drafts, q

    def step(self, seed):
        """One whole step (draft + verify), as compiled in the no-host-sync test."""
        drafts, q = self.draft(seed) if self.B > 1 else self.empty_draft(seed)
        return self.verify(seed, drafts, q)


@torch.inference_mode()  # wraps each resume of the generator, not the caller's code
def decode_spec_linear(ctx: DecodeContext, prompt_ids: torch.Tensor) -> Iterator[list[int]]:
    g = ctx.gen
    if ctx.max_new_tokens == 0:
        return
    spec = LinearSpec(ctx)
    B, run, timer = spec.B, StepRunner(ctx), PhaseTimer(ctx)
    logits = ctx.prefill(prompt_ids)
    seed = sample(logits[None], g.temperature, g.top_k, g.top_p, ctx.generator)
    em = Emitter(ctx)
    out, done, forced = em.take(seed.tolist())
    yield out
    if done:
        return
    while True:
        if forced:  # thinking budget: the end-think token is the new seed, after what was kept
            ctx.cache.truncate(em.cache_length())
            seed = torch.full_like(seed, g.end_think_id)
        check_room(ctx, em.cache_length(), B)
        timer.start()
        if B > 1:
            drafts, q = run(("draft", B), spec.draft, seed)
            timer.mark("draft")
        else:
            drafts, q = spec.empty_draft(seed)
        tokens, count, seed = run(("verify", B), spec.verify, seed, drafts, q)
        timer.mark("verify")
        host = produced(tokens.tolist())  # the step's one host sync
        seed = seed.clone()  # graph outputs are overwritten by the next replay
        timer.flush()
        ctx.stats.forwards += 2 if B > 1 else 1
        ctx.stats.acceptance_lengths[len(host)] += 1
        out, done, forced = em.take(host)
        yield out
        if done:
            return
