"""Linear self-speculation (docs/ALGORITHMS.md): one bidirectional draft pass, one causal verify pass.

State between steps: the pending token (a verified token, already emitted, whose K/V are not in the cache
yet) at position n = cache length. A step:

1. draft:  `[pending, M x (B-1)]` at n .. n+B-1, bidirectional, cache read-only, draft LoRA on (when
   loaded and enabled); d_i = argmax (or a sample from q_i) at position i >= 1, the mask id
   excluded. Skipped when B = 1 (nothing to draft: the step is then one AR forward).
2. verify: `[pending, d_1 .. d_{B-1}]`, causal, writes B scratch entries.
3. kernels.verify: greedy rule at T = 0, standard speculative sampling against q at T > 0;
   commits pending + accepted drafts (c + 1 entries, exactly AR's K/V), emits d_1 .. d_c plus the
   bonus, and the bonus is the next pending token.

Forwards: 2 per step (1 when B = 1). The first token comes from the prefill, as in AR.
"""
from __future__ import annotations

import torch

from ... import kernels as K
from .base import StepResult, Strategy
from .device import draw_drafts, produced, require_mask_id, verifier_inputs, without_mask


class LinearSpec(Strategy):
    mode = "spec-linear"
    family = "spec-linear"
    auto_blocks = (2, 4, 8, 16, 32)

    def __init__(self, ctx, B):
        super().__init__(ctx, B)
        self.mask_id, self.mask_index = require_mask_id(ctx, self.mode)
        self.backend = ctx.model.backend
        self.draft_rows = torch.arange(1, B, device=ctx.device)

    def chunk(self, pending):
        return K.draft_tree(pending, self.ctx.cache.length, self.B, self.mask_id, backend=self.backend)

    def draft(self, pending):
        """pending [1] -> (drafts [B-1], q [B-1, V] or None)."""
        ctx = self.ctx
        tokens, pos = self.chunk(pending)
        logits = ctx.model(tokens, pos, ctx.cache, K.BIDIRECTIONAL, write_cache=False,
                           lora=ctx.gen.draft_lora, logits_index=self.draft_rows)
        return draw_drafts(ctx, without_mask(logits, self.mask_index))

    def verify(self, pending, drafts, q):
        """-> (tokens [B] padded with -1, count [], next pending token [1]); commits the accepted chain."""
        ctx, cache = self.ctx, self.ctx.cache
        _, pos = self.chunk(pending)
        chain = torch.cat([pending, drafts])
        logits = ctx.model(chain, pos, cache, K.CAUSAL, write_cache=True)
        target, u, e = verifier_inputs(ctx, logits, drafts.shape[0])
        tokens, count = K.verify(drafts, target, q, u, e, cache.k, cache.v, cache.length, stride=1,
                                 backend=self.backend)
        return tokens, count, tokens.gather(0, (count - 1).reshape(1))

    def empty_draft(self, pending):
        """B = 1: no drafts; q an empty [0, V] under sampling so verify uses the sampled rule."""
        V = self.ctx.cfg.vocab_size
        drafts = pending.new_empty(0)
        q = None if self.ctx.gen.temperature <= 0 else torch.empty(0, V, device=pending.device)
        return drafts, q

    def step(self, run, timer, em):
        B, pending = self.B, self.pending
        if B > 1:
            drafts, q = run(("draft", B), self.draft, pending)
            timer.mark("draft")
        else:
            drafts, q = self.empty_draft(pending)
        tokens, _, self.pending = run(("verify", B), self.verify, pending, drafts, q)
        timer.mark("verify")
        host = produced(tokens.tolist())  # the step's one host sync
        return StepResult(host, 2 if B > 1 else 1, B - 1)
