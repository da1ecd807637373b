"""Device helpers of the draft-tree strategies (tree_linear.py, tree_quadratic.py), no host sync: the
draft's log-probabilities a tree is built from, the node budget of a block size, the one-node tree of
a restart, a tree's chunk of tokens and positions, and its verification; and `TreeStrategy`, what
the two strategies declare alike (children per node, nodes by default, scratch under a request).

A tree's nodes are candidates the draft ranked, not samples: the children of a node are the K most
likely tokens of the next depth (kernels/tree.py). So at T > 0 the verifier (kernels/tree_verify.py)
tries each as a point mass, which keeps AR's distribution whatever the draft said; the draft's
distributions only decide which candidates are offered.
"""
from __future__ import annotations

import torch

from ... import kernels as K
from ...kernels.tree import MAX_NODES, DraftTree, max_nodes
from ...sampling import probs
from ..context import AUTO, DecodeContext
from .base import Strategy
from .device import verifier_inputs

TOP_K = 4  # children per node: the draft's top-4 at the next depth (measured: benchmarks/bench_tree.py)


class TreeStrategy(Strategy):
    """A draft-tree variant of a self-speculation mode; `node_rows(B)`: the query rows (and scratch
    slots) a node takes in its verify pass."""

    TOP_K = TOP_K

    @staticmethod
    def default_nodes(B: int) -> int:
        """Nodes at block B under auto (`tree_nodes` caps them) and without a `tree_nodes` request: as
        many as the chain verifies. Of the sizes measured on the embedded model on a CPU
        (benchmarks/bench_tree.py) N = B had the best tok/s: linear 1.11x / 1.21x the chain at B = 8 / 16,
        quadratic 1.25x / 1.32x; N = 32 and 64 cost more rows than they gain."""
        return B

    @staticmethod
    def node_rows(B: int) -> int:
        raise NotImplementedError

    @classmethod
    def scratch(cls, B: int) -> int:
        return B * cls.node_rows(B)

    @classmethod
    def nodes_for(cls, B: int, tree_nodes: int | None, auto: bool, depths: int | None = None) -> int:
        """The nodes of a tree at block size B: a fixed mode's the request's `tree_nodes` (else
        `default_nodes(B)`); under auto, `default_nodes(B)` (which `tree_nodes` caps: auto's candidates
        are keyed by mode and block size, so one N per block size is what it can weigh). Either is
        capped by what a tree of B - 1 depths (or `depths`) with TOP_K children per node can hold."""
        default = cls.default_nodes(B)
        want = tree_nodes or default
        if auto:
            want = min(want, default)
        D = B - 1 if depths is None else depths
        return max(1, min(want, max_nodes(D, cls.TOP_K), MAX_NODES))

    @classmethod
    def scratch_for(cls, B: int, gen, auto: bool = False) -> int:
        # never below scratch(B): the driver checks the room of a step by it
        return max(cls.scratch(B), cls.nodes_for(B, gen.tree_nodes, auto) * cls.node_rows(B))


def node_budget(ctx: DecodeContext, cls: type[TreeStrategy], B: int, depths: int | None = None) -> int:
    """`cls.nodes_for` under this generation's request and mode."""
    return cls.nodes_for(B, ctx.gen.tree_nodes, ctx.stats.mode == AUTO, depths)


def draft_logp(ctx: DecodeContext, logits: torch.Tensor) -> torch.Tensor:
    """[D, V] log-probabilities the tree is ranked by, from draft logits (the mask id already at
    -inf): the draft's own softmax when greedy, the request's filtered distribution when sampling
    (a filtered-out token is -inf, ranked last)."""
    g = ctx.gen
    if g.temperature <= 0:
        return torch.log_softmax(logits.float(), dim=-1)
    return torch.log(probs(logits, g.temperature, g.top_k, g.top_p))


def root_tree(pending: torch.Tensor) -> DraftTree:
    """The tree of the root alone (a step with no draft yet)."""
    dev = pending.device
    return DraftTree(pending.reshape(1), torch.full((1,), -1, dtype=torch.long, device=dev),
                     torch.zeros(1, dtype=torch.long, device=dev), torch.ones(1, 1, dtype=torch.int32, device=dev))


def tree_chunk(tree: DraftTree, cache_len, W: int, mask_id: int):
    """(tokens [N*W], positions [N*W]): node i's sub-block `[token_i, M x (W-1)]`, the node at n + depth_i
    and its masks at n + depth_i + 1 .. n + depth_i + W - 1."""
    off = torch.arange(W, device=tree.tokens.device)
    tokens = torch.where(off[None, :] == 0, tree.tokens[:, None], torch.full_like(tree.tokens[:, None], mask_id))
    positions = cache_len + tree.depth[:, None] + off[None, :]
    return tokens.reshape(-1), positions.reshape(-1)


def verify_tree(ctx: DecodeContext, tree: DraftTree, logits: torch.Tensor, depth_limit: int, stride: int, backend):
    """kernels.tree_verify on the verifier's logits [N, V] (the greedy rule, or the sampled one with the
    request's filtering and fresh coins), committing the accepted path: (out, count, path, last)."""
    cache = ctx.cache
    target, u, e = verifier_inputs(ctx, logits, tree.tokens.shape[0])
    return K.tree_verify(*tree, target, u, e, depth_limit, cache.k, cache.v, cache.length, stride, backend=backend)
