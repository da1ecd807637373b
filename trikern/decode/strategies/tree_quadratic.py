"""Quadratic self-speculation over a draft tree: one forward verifies a tree of N candidate nodes and
drafts, for every node, the block that follows it (`spec-quadratic` with `tree_nodes=N`).

State between steps: the shared state (base.py) plus the draft's log-probabilities of the next D <= B-1
depths (`logp`, [D, V]; None right after the prompt, a forced token or a switch from another mode). A
step (`TreeQuadratic.step`, host-sync free):

1. kernels.build_tree: the N best paths below the pending token (the root), K children per node.
2. One forward over N sub-blocks of W = B+1 tokens, node i's `[token_i, M x B]` with the node at
   n + depth_i and its masks at n + depth_i + 1 .. n + depth_i + B, under the TREE pattern: a node
   sees the cache, its ancestors and itself; a mask sees the cache, its node's ancestors and node, and
   its own sub-block. Node rows are AR's rows (each node's root path is a causal chain); the masks of
   node i draft the block that would follow if node i's path were accepted. Writes N(B+1) scratch
   entries.
3. kernels.tree_verify (stride W): the deepest accepted node c, its path and the bonus are emitted,
   the K/V of the root and the path's nodes are compacted to n .. n+depth_c and committed.
4. Next draft: node c's sub-block. Its first mask sits where the bonus now is (already verified);
   its masks at offsets 2 .. B give the log-probabilities of the next tree's depths 1 .. B-1.

With one node per depth (K = 1, N = B) this is spec_quadratic.py's step, token for token. A step
without a draft (the first, or a restart) is the one-node tree `[pending, M x B]`: it verifies
nothing and yields the bonus, as spec_quadratic.py's A = 1 step. Forwards: 1 per step, N(B+1) rows.
"""
from __future__ import annotations

from ... import kernels as K
from ...kernels.attention import TreeMask
from ..runtime import check_room
from .base import StepResult
from .device import produced, require_mask_id, without_mask
from .tree_device import TreeStrategy, draft_logp, node_budget, root_tree, tree_chunk, verify_tree


class TreeQuadratic(TreeStrategy):
    mode = "tree-quadratic"
    variant_of = "spec-quadratic"  # asked for as spec-quadratic with tree_nodes=N
    family = "tree-quadratic"
    # Under auto (with tree_nodes) the tree replaces the chain at these blocks (registry.candidates):
    # the blocks whose N = B tree was fastest (B = 16's B(B+1) rows lose to every linear setting on
    # a CPU; benchmarks/bench_tree.py).
    auto_blocks = (4, 8)

    @staticmethod
    def node_rows(B: int) -> int:
        return B + 1

    @classmethod
    def entry_steps(cls, B, prev):
        """As spec_quadratic.py: from another mode the first step restarts (verifies nothing); from a
        smaller block of this mode it verifies the old, shallower draft."""
        return int(prev is None or prev[0] != cls.mode or B > prev[1])

    def __init__(self, ctx, B):
        super().__init__(ctx, B)
        self.W = B + 1
        self.mask_id, self.mask_index = require_mask_id(ctx, self.mode)
        self.backend = ctx.model.backend
        self.logp = None

    def nodes(self, depths: int) -> int:
        return node_budget(self.ctx, type(self), self.B, depths)

    def start(self, pending):
        super().start(pending)
        self.logp = None

    def take_over(self, prev):
        """From another block size of this mode, keep its next draft (its first B-1 depths)."""
        if not isinstance(prev, TreeQuadratic):
            return super().take_over(prev)
        self.pending = prev.pending
        self.logp = None if prev.logp is None else prev.logp[: self.B - 1]

    def forward(self, pending, logp):
        """-> (tokens [D+1] padded with -1, count [], next pending [1], next logp [B-1, V])."""
        ctx, cache, W = self.ctx, self.ctx.cache, self.W
        D = 0 if logp is None else logp.shape[0]
        tree = root_tree(pending) if D == 0 else K.build_tree(logp, pending, self.nodes(D), self.TOP_K,
                                                             backend=self.backend)
        N = tree.tokens.shape[0]
        tokens, pos = tree_chunk(tree, cache.length, W, self.mask_id)
        hidden = ctx.model(tokens, pos, cache, K.TREE, write_cache=True, sub_block=TreeMask(tree.ancestors, W),
                           return_hidden=True).view(N, W, -1)
        # The head runs on the N node rows, then on the B-1 draft rows of the one sub-block the verdict picks.
        out, count, _, last = verify_tree(ctx, tree, ctx.model.logits(hidden[:, 0]), D, W, self.backend)
        bonus = out.gather(0, (count - 1).reshape(1))
        masks = ctx.model.logits(hidden.index_select(0, last.reshape(1))[0, 2:])  # offsets 2 .. B of node c
        return out, count, bonus, draft_logp(ctx, without_mask(masks, self.mask_index))

    def _advance(self, run) -> StepResult:
        D = 0 if self.logp is None else self.logp.shape[0]
        key = ("tree-quadratic", D, self.nodes(D) if D else 1, self.B)
        tokens, _, self.pending, self.logp = run(key, self.forward, self.pending, self.logp)
        return StepResult(produced(tokens.tolist()), 1, D)  # the step's one host sync

    def prefill(self, prompt_ids, run, timer):
        """The prompt minus its last token causally, then the one-node step on `[p_last, M x B]`."""
        ctx = self.ctx
        n = prompt_ids.shape[0]
        if n > 1:
            ctx.prefill(prompt_ids[:-1])
        check_room(ctx, n - 1, self.W)
        self.start(prompt_ids[-1:])
        first = self._advance(run)
        return StepResult(first.tokens, 1 + (n > 1 and ctx.reused < n - 1))

    def step(self, run, timer, em):
        D = 0 if self.logp is None else self.logp.shape[0]
        check_room(self.ctx, em.cache_length(), (self.nodes(D) if D else 1) * self.W)  # N may exceed B
        result = self._advance(run)
        timer.mark("step")
        return result
