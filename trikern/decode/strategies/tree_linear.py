"""Linear self-speculation over a draft tree: the chain's draft pass, then one verify pass over a tree of
N candidate continuations instead of the top-1 chain (`spec-linear` with `tree_nodes=N`).

State between steps: the shared state (base.py). A step:

1. draft:  `[pending, M x (B-1)]` at n .. n+B-1, bidirectional, cache read-only (as spec_linear.py);
   its rows 1 .. B-1 give the draft's log-probabilities of depths 1 .. B-1 (tree_device.draft_logp).
2. kernels.build_tree: the N best paths (root = pending), K children per node at most.
3. verify: the N node tokens, node i at position n + depth_i, one causal pass under the TREE pattern
   (each node sees the cache, its ancestors and itself), writing N scratch entries. Row i is AR's
   distribution of the token after node i's root path.
4. kernels.tree_verify: the deepest node whose path AR accepts; emits the path below the root plus
   the bonus; keeps the root's and the path's K/V (compacted to n .. n+c), the bonus is the next
   pending token.

Forwards: 2 per step (1 when B = 1: the tree is the root alone, an AR step). The verify pass carries N
tokens instead of B: at batch 1 a wider pass costs little more, and any of the tree's paths may be
the one AR takes.
"""
from __future__ import annotations

import torch

from ... import kernels as K
from ...kernels.attention import TreeMask
from ..runtime import check_room
from .base import StepResult
from .device import produced, require_mask_id, without_mask
from .tree_device import TreeStrategy, draft_logp, node_budget, root_tree, verify_tree


class TreeLinear(TreeStrategy):
    mode = "tree-linear"
    variant_of = "spec-linear"  # asked for as spec-linear with tree_nodes=N
    family = "tree-linear"
    # Under auto (with tree_nodes) the tree replaces the chain at these blocks (registry.candidates):
    # where a tree beat the chain on the embedded model on a CPU (benchmarks/bench_tree.py; B = 4
    # broke even).
    auto_blocks = (8, 16)

    @staticmethod
    def node_rows(B: int) -> int:
        return 1

    def __init__(self, ctx, B):
        super().__init__(ctx, B)
        self.mask_id, self.mask_index = require_mask_id(ctx, self.mode)
        self.backend = ctx.model.backend
        self.draft_rows = torch.arange(1, B, device=ctx.device)
        self.nodes = node_budget(ctx, type(self), B)

    def draft(self, pending):
        """pending [1] -> the draft's log-probabilities [B-1, V] of depths 1 .. B-1."""
        ctx = self.ctx
        tokens, pos = K.draft_tree(pending, ctx.cache.length, self.B, self.mask_id, backend=self.backend)
        logits = ctx.model(tokens, pos, ctx.cache, K.BIDIRECTIONAL, write_cache=False,
                           lora=ctx.gen.draft_lora, logits_index=self.draft_rows)
        return draft_logp(ctx, without_mask(logits, self.mask_index))

    def verify(self, pending, logp):
        """-> (tokens [B] padded with -1, count [], next pending [1]); commits the accepted path."""
        ctx, cache = self.ctx, self.ctx.cache
        if logp is None:
            tree = root_tree(pending)
        else:
            tree = K.build_tree(logp, pending, self.nodes, self.TOP_K, backend=self.backend)
        logits = ctx.model(tree.tokens, cache.length + tree.depth, cache, K.TREE, write_cache=True,
                           sub_block=TreeMask(tree.ancestors, 1))
        out, count, _, _ = verify_tree(ctx, tree, logits, self.B - 1, 1, self.backend)
        return out, count, out.gather(0, (count - 1).reshape(1))

    def step(self, run, timer, em):
        B, pending = self.B, self.pending
        check_room(self.ctx, em.cache_length(), max(self.nodes, B))  # N may exceed scratch(B)
        logp = None
        if B > 1:
            logp = run(("tree-draft", B), self.draft, pending)
            timer.mark("draft")
        tokens, _, self.pending = run(("tree-verify", B, self.nodes), self.verify, pending, logp)
        timer.mark("verify")
        host = produced(tokens.tolist())  # the step's one host sync
        return StepResult(host, 2 if B > 1 else 1, B - 1)
