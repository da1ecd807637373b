"""Quadratic self-speculation (docs/ALGORITHMS.md): one forward verifies the draft and drafts the next block
for every possible acceptance length.

State between steps: the shared state (strategy.py) plus the draft d_0 .. d_{A-1} (A = B; A = 1
right after the prompt or a forced token; up to B after a switch from another block size, see
`take_over`) and, when sampling, q [A-1, V], the distributions d_1 .. d_{A-1} were drawn from. d_0
is verified and already emitted; its K/V are not in the cache yet; it sits at n = cache length.
A step (`QuadraticSpec.step`, host-sync free):

1. kernels.draft_tree: A sub-blocks of B+1 tokens, sub-block i = `[d_i, M x B]`, d_i at n+i and
   its masks at n+i+1 .. n+i+B; one forward under the QUADRATIC mask (d_i sees the cache and
   d_0 .. d_i; a mask sees the cache, d_0 .. d_i and its own sub-block), writing A(B+1) scratch
   entries.
2. kernels.verify on the anchors' AR logits (row i predicts n+i+1) with stride B+1: c drafts
   match, emits d_1 .. d_c and the bonus ar_c, keeps the K/V of d_0 .. d_c (compacted to
   n .. n+c).
3. Next draft = sub-block c's masks (offsets 1 .. B, positions n+c+1 .. n+c+B), the first
   replaced by the bonus: `[ar_c, draft(offset 2) .. draft(offset B)]`, mask id excluded.

Emission: The published algorithm emits d_0 .. d_c per step; trikern emits each token as soon as it is verified
(d_1 .. d_c and the bonus now, the bonus being the next d_0), the same sequence one step earlier.

First step: the published algorithm drafts from `[prompt, M x B]` with the prompt causal. trikern runs the prompt
minus its last token as the usual causal prefill, then the A = 1 step on `[p_last, M x B]`: p_last
is causal over the prompt (its K/V are the prefill's), the masks see the prompt and each other, its
AR logit gives d_0 and its masks d_1 .. d_{B-1}. Both calls are the prefill of its one pass and
count as `prefill_forwards` (2, or 1 for a one-token prompt); like AR's prefill it yields the first
token. Every later step costs one forward; `acceptance_lengths[c + 1]` counts tokens produced per
step (before the EOS / budget cut). After a forced end-think token or a switch from another mode the
state restarts with the A = 1 step on `[pending, M x B]` (one forward, produces 1 token); a switch
from another block size of this mode keeps that strategy's draft instead.
"""
from __future__ import annotations

import torch

from ... import kernels as K
from ..runtime import check_room
from .base import StepResult, Strategy
from .device import draw_drafts, produced, require_mask_id, verifier_inputs, without_mask


class QuadraticSpec(Strategy):
    mode = "spec-quadratic"
    family = "spec-quadratic"
    auto_blocks = (2, 4, 8, 16)  # B(B+1) rows per forward: wider steps cost more than they accept

    def __init__(self, ctx, B):
        super().__init__(ctx, B)
        self.width = B + 1
        self.mask_id, self.mask_index = require_mask_id(ctx, self.mode)
        self.backend = ctx.model.backend
        self.draft = self.q = None

    @staticmethod
    def scratch(B: int) -> int:
        return B * (B + 1)

    @classmethod
    def entry_steps(cls, B, prev):
        """From another mode the first step restarts (verifies nothing); from a smaller block of
        this mode it verifies the old, shorter draft: one step either way before a steady one."""
        return int(prev is None or prev[0] != cls.mode or B > prev[1])

    def start(self, pending):
        """A = 1 state: only d_0 (no drafts yet), q an empty [0, V] under sampling."""
        super().start(pending)
        self.draft = pending.reshape(1)
        self.q = None if self.ctx.gen.temperature <= 0 else torch.empty(0, self.ctx.cfg.vocab_size,
                                                                         device=pending.device)

    def take_over(self, prev):
        """From another block size of this mode, keep its next draft (the first B tokens; a shorter
        one is verified as it is, A < B sub-blocks): no one-token restart step."""
        if not isinstance(prev, QuadraticSpec):
            return super().take_over(prev)
        self.pending, self.draft = prev.pending, prev.draft[: self.B]
        self.q = None if prev.q is None else prev.q[: self.draft.shape[0] - 1]

    def forward(self, draft, q):
        """draft [A], q [A-1, V] or None -> (tokens [A] padded with -1, count [], next draft [B],
        next q [B-1, V] or None)."""
        ctx, cache, W = self.ctx, self.ctx.cache, self.width
        A = draft.shape[0]
        tokens, pos = K.draft_tree(draft, cache.length, W, self.mask_id, backend=self.backend)
        # The head runs on the A anchors, then on the B-1 draft rows of the one sub-block that the
        # verdict picks: 2B rows instead of A(B+1).
        hidden = ctx.model(tokens, pos, cache, K.QUADRATIC, write_cache=True, sub_block=W, return_hidden=True)
        hidden = hidden.view(A, W, -1)
        target, u, e = verifier_inputs(ctx, ctx.model.logits(hidden[:, 0]), A - 1)
        out, count = K.verify(draft[1:], target, q, u, e, cache.k, cache.v, cache.length, stride=W,
                              backend=self.backend)
        c = (count - 1).reshape(1)
        bonus = out.gather(0, c)
        masks = ctx.model.logits(hidden.index_select(0, c)[0, 2:])  # offsets 2 .. B of sub-block c
        nxt, nq = draw_drafts(ctx, without_mask(masks, self.mask_index))
        return out, count, torch.cat([bonus, nxt]), nq

    def _advance(self, run) -> StepResult:
        drafted = self.draft.shape[0] - 1
        tokens, _, self.draft, self.q = run(("quadratic", self.draft.shape[0], self.B), self.forward, self.draft,
                                            self.q)
        self.pending = self.draft[:1]
        return StepResult(produced(tokens.tolist()), 1, drafted)  # the step's one host sync

    def prefill(self, prompt_ids, run, timer):
        """The prompt minus its last token causally, then the A = 1 step on `[p_last, M x B]`."""
        ctx = self.ctx
        n = prompt_ids.shape[0]
        if n > 1:
            ctx.prefill(prompt_ids[:-1])
        check_room(ctx, n - 1, self.width)
        self.start(prompt_ids[-1:])
        first = self._advance(run)
        return StepResult(first.tokens, 1 + (n > 1 and ctx.reused < n - 1))

    def step(self, run, timer, em):
        result = self._advance(run)
        timer.mark("step")
        return result
