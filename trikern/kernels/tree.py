"""Draft-tree construction on the device: a best-first tree of candidate continuations under a node budget.

A self-speculation draft pass gives, for every position of the block, a distribution over the token
there. Verifying only the top-1 chain wastes the rest: when a draft is rejected, the right token is
often the draft's second choice. This op turns the per-position distributions into a tree of N
candidate nodes that one verify pass checks at once (kernels.attention's TREE pattern, kernels.tree_verify).

Inputs
  logp    [D, V] float: the draft's log-probabilities; row d-1 scores the token at depth d (d = 1 .. D,
          position n + d). -inf (an excluded token) is clamped to -1e30, so every candidate stays
          orderable. D = 0 is allowed (the tree is then the root alone).
  root    [1] int64: the verified token at depth 0 (its K/V are written by the verify pass).
  nodes   N >= 1: the node budget, root included; at most `max_nodes(D, K)` (`MAX_NODES` for Triton).
  top_k   K >= 1: children per node bound; a node at depth d may have as children the K most likely
          tokens of depth d+1 (`top_candidates`), in that order.

Tree
  Node 0 is the root (depth 0, score 0). A node's score is the sum of logp along its root path: the
  log of the product of the draft's probabilities. Nodes are added best first: the highest-scoring
  candidate child of a node already in the tree, until N nodes are in. Scores never rise from parent
  to child (logp <= 0), so the tree holds the N best paths. Candidates are enumerated lazily: each
  added node i offers at most two, its next sibling (rank + 1 of the same depth, slot 2i - 1) and its
  first child (rank 0 of the next depth, slot 2i); the root's first child is slot 0. Equal scores go
  to the lower slot (the candidate offered first), so the tree is a function of logp alone.
  Consequences the verifier relies on: a parent precedes its children, and siblings come in rank
  order. With K = 1 and N = D + 1 the tree is the top-1 chain (parent i - 1, depth i).

Outputs (a `DraftTree`)
  tokens     [N] int64, node i's token (tokens[0] = root)
  parents    [N] int64, parents[0] = -1
  depth      [N] int64
  ancestors  [N, W] int32, W = ceil(N / 32): bit j % 32 of word j // 32 of row i is set iff node j is
             node i or one of its ancestors (the TREE attention pattern's input).

The Triton kernel is one program: the frontier (2N - 1 slots) and the nodes stay in registers, each
of the N - 1 iterations takes the frontier's argmax (leftmost on ties), adds the node and offers its
two candidates; everything is stored at the end. The top-K per depth (`top_candidates`, torch.topk)
runs before it on the device. No host sync: N, K and D are shapes.
"""
from __future__ import annotations

import struct
from typing import NamedTuple

import torch
import triton
import triton.language as tl

from .dispatch import FP_FUSION

MAX_NODES = 256  # the frontier and the ancestor rows of one program stay in registers
NEG_FLOOR = -1.0e30  # an excluded token's log-probability: orderable, and sums of 256 stay finite
_WORD = 32


class DraftTree(NamedTuple):
    tokens: torch.Tensor
    parents: torch.Tensor
    depth: torch.Tensor
    ancestors: torch.Tensor


def max_nodes(depths: int, top_k: int) -> int:
    """Nodes of the full tree of `depths` levels below the root with `top_k` children each (root included)."""
    total, level = 1, 1
    for _ in range(depths):
        level *= top_k
        total += level
        if total > 1 << 40:
            break
    return total


def ancestor_words(nodes: int) -> int:
    return (nodes + _WORD - 1) // _WORD


def _check(logp, root, nodes, top_k):
    if logp.dim() != 2 or not logp.dtype.is_floating_point:
        raise ValueError(f"tree: logp must be [D, V] floating point; got {tuple(logp.shape)} {logp.dtype}")
    if root.dim() != 1 or root.shape[0] != 1 or root.dtype != torch.long:
        raise ValueError(f"tree: root must be a [1] int64 tensor; got {tuple(root.shape)} {root.dtype}")
    if root.device != logp.device:
        raise ValueError(f"tree: root is on {root.device}, logp on {logp.device}")
    if not isinstance(top_k, int) or isinstance(top_k, bool) or top_k < 1:
        raise ValueError(f"tree: top_k={top_k!r} must be an int >= 1")
    if not isinstance(nodes, int) or isinstance(nodes, bool) or nodes < 1:
        raise ValueError(f"tree: nodes={nodes!r} must be an int >= 1")
    D, V = logp.shape
    if D and V == 0:
        raise ValueError("tree: logp has an empty vocabulary dimension (V = 0)")
    cap = max_nodes(D, min(top_k, V) if D else 1)
    if nodes > cap:
        raise ValueError(f"tree: nodes={nodes} but a tree of depth {D} with at most {min(top_k, max(V, 1))} "
                         f"children per node has only {cap}")


def top_candidates(logp: torch.Tensor, top_k: int):
    """(values [D, K'] fp32, descending and clamped to NEG_FLOOR; tokens [D, K'] int64), K' = min(top_k, V):
    every node's candidate children at each depth, in rank order."""
    k = min(top_k, logp.shape[1]) if logp.shape[0] else 0
    vals, toks = torch.topk(logp.float(), k, dim=-1)
    return vals.clamp_min(NEG_FLOOR), toks


def _f32(x: float) -> float:
    """x rounded to fp32: a sum of two fp32 values in fp64 rounded once is their fp32 sum."""
    return struct.unpack("f", struct.pack("f", x))[0]


def _signed32(word: int) -> int:
    return word - (1 << 32) if word >= 1 << 31 else word


def build_tree_ref(logp, root, nodes, top_k) -> DraftTree:
    """The rule above with a heap keyed (-score, slot), in fp32 arithmetic (the kernel's ties)."""
    import heapq

    _check(logp, root, nodes, top_k)
    vals, toks = top_candidates(logp, top_k)
    D, K = vals.shape
    lv, lt = vals.tolist(), toks.tolist()
    tokens, parents, depth, score = [int(root[0])], [-1], [0], [0.0]
    anc = [1]
    heap = [(-lv[0][0], 0, 0, 1, 0)] if D else []  # (-score, slot, parent, depth, rank)
    for i in range(1, nodes):
        neg, _, p, d, r = heapq.heappop(heap)
        s = -neg
        tokens.append(lt[d - 1][r])
        parents.append(p)
        depth.append(d)
        score.append(s)
        anc.append(anc[p] | 1 << i)
        if r + 1 < K:
            heapq.heappush(heap, (-_f32(score[p] + lv[d - 1][r + 1]), 2 * i - 1, p, d, r + 1))
        if d < D:
            heapq.heappush(heap, (-_f32(s + lv[d][0]), 2 * i, i, d + 1, 0))
    W = ancestor_words(nodes)
    words = [[_signed32(a >> (_WORD * w) & 0xFFFFFFFF) for w in range(W)] for a in anc]
    dev = logp.device
    lng = dict(dtype=torch.long, device=dev)
    return DraftTree(torch.tensor(tokens, **lng), torch.tensor(parents, **lng), torch.tensor(depth, **lng),
                     torch.tensor(words, dtype=torch.int32, device=dev))


@triton.jit
def _tree_kernel(LP, TOK, ROOT, TOKENS, PARENTS, DEPTH, ANC, N, D, K, W,
                 BLOCK_F: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_W: tl.constexpr):
    f = tl.arange(0, BLOCK_F)
    node = tl.arange(0, BLOCK_N)
    word = tl.arange(0, BLOCK_W)
    neg = float("-inf")
    # The frontier: per slot the candidate's score, its parent's score, parent, depth and rank.
    first = tl.load(LP, mask=D > 0, other=0.0)
    f_score = tl.where((f == 0) & (D > 0), first, neg)
    f_pscore = tl.zeros([BLOCK_F], dtype=tl.float32)
    f_parent = tl.zeros([BLOCK_F], dtype=tl.int32)
    f_depth = tl.where(f == 0, 1, 0)
    f_rank = tl.zeros([BLOCK_F], dtype=tl.int32)
    # The nodes.
    n_tok = tl.where(node == 0, tl.load(ROOT), 0).to(tl.int64)
    n_parent = tl.where(node == 0, -1, 0).to(tl.int64)
    n_depth = tl.zeros([BLOCK_N], dtype=tl.int64)
    anc = tl.where((node[:, None] == 0) & (word[None, :] == 0), 1, 0).to(tl.int32)
    one = tl.full([BLOCK_W], 1, dtype=tl.int32)
    for i in range(1, N):
        best, s = tl.max(f_score, axis=0, return_indices=True)  # ties: the leftmost slot
        sel = f == s
        p = tl.sum(tl.where(sel, f_parent, 0), axis=0)
        d = tl.sum(tl.where(sel, f_depth, 0), axis=0)
        r = tl.sum(tl.where(sel, f_rank, 0), axis=0)
        ps = tl.sum(tl.where(sel, f_pscore, 0.0), axis=0)
        tok = tl.load(TOK + (d - 1) * K + r)
        n_tok = tl.where(node == i, tok, n_tok)
        n_parent = tl.where(node == i, p.to(tl.int64), n_parent)
        n_depth = tl.where(node == i, d.to(tl.int64), n_depth)
        anc_p = tl.sum(tl.where(node[:, None] == p, anc, 0), axis=0)  # one row selected: its words
        bit = tl.where(word == i // 32, one << (i % 32), 0)
        anc = tl.where(node[:, None] == i, (anc_p | bit)[None, :], anc)
        # Retire the slot; offer the next sibling (slot 2i - 1) and the first child (slot 2i).
        f_score = tl.where(sel, neg, f_score)
        sib_ok = r + 1 < K
        sib = ps + tl.load(LP + (d - 1) * K + r + 1, mask=sib_ok, other=0.0)
        s1 = f == 2 * i - 1
        f_score = tl.where(s1, tl.where(sib_ok, sib, neg), f_score)
        f_pscore = tl.where(s1, ps, f_pscore)
        f_parent = tl.where(s1, p, f_parent)
        f_depth = tl.where(s1, d, f_depth)
        f_rank = tl.where(s1, r + 1, f_rank)
        child_ok = d < D
        child = best + tl.load(LP + d * K, mask=child_ok, other=0.0)
        s2 = f == 2 * i
        f_score = tl.where(s2, tl.where(child_ok, child, neg), f_score)
        f_pscore = tl.where(s2, best, f_pscore)
        f_parent = tl.where(s2, i, f_parent)
        f_depth = tl.where(s2, d + 1, f_depth)
        f_rank = tl.where(s2, 0, f_rank)
    ok = node < N
    tl.store(TOKENS + node, n_tok, mask=ok)
    tl.store(PARENTS + node, n_parent, mask=ok)
    tl.store(DEPTH + node, n_depth, mask=ok)
    tl.store(ANC + node[:, None] * W + word[None, :], anc, mask=ok[:, None] & (word < W)[None, :])


def _warps(block_n: int, block_w: int) -> int:
    return 4 if block_n * block_w <= 1024 else 8


def build_tree_triton(logp, root, nodes, top_k) -> DraftTree:
    _check(logp, root, nodes, top_k)
    if nodes > MAX_NODES:
        raise ValueError(f"tree: nodes={nodes}; the Triton kernel builds at most {MAX_NODES}")
    vals, toks = top_candidates(logp, top_k)
    vals, toks = vals.contiguous(), toks.contiguous()
    D, K = vals.shape
    dev = logp.device
    W = ancestor_words(nodes)
    tokens = torch.empty(nodes, dtype=torch.long, device=dev)
    parents = torch.empty_like(tokens)
    depth = torch.empty_like(tokens)
    ancestors = torch.empty(nodes, W, dtype=torch.int32, device=dev)
    # D = 0: empty tables may have no storage; the kernel reads nothing from them (N = 1)
    lp = vals if vals.numel() else root.new_zeros(1, dtype=torch.float32)
    tk = toks if toks.numel() else root
    block_n, block_w = triton.next_power_of_2(nodes), triton.next_power_of_2(W)
    _tree_kernel[(1,)](lp, tk, root, tokens, parents, depth, ancestors, nodes, D, max(K, 1), W,
                       BLOCK_F=triton.next_power_of_2(2 * nodes), BLOCK_N=block_n, BLOCK_W=block_w,
                       num_warps=_warps(block_n, block_w), enable_fp_fusion=FP_FUSION)
    return DraftTree(tokens, parents, depth, ancestors)


def ancestors_from_parents(parents: torch.Tensor) -> torch.Tensor:
    """[N, W] int32 ancestor words of a parent array (a parent precedes its child): for tests and
    hand-made trees (a chain, a star)."""
    N = parents.shape[0]
    anc = []
    for i, p in enumerate(parents.tolist()):
        if i and not 0 <= p < i:
            raise ValueError(f"tree: parents[{i}]={p}: a parent must precede its child")
        anc.append((anc[p] if i else 0) | 1 << i)
    W = ancestor_words(N)
    return torch.tensor([[_signed32(a >> (_WORD * w) & 0xFFFFFFFF) for w in range(W)] for a in anc],
                        dtype=torch.int32, device=parents.device)


def aot_variants(arch: int):
    """The kernel for a 64-node and the largest tree."""
    from .aot import AotVariant

    sig = {"LP": "*fp32", "TOK": "*i64", "ROOT": "*i64", "TOKENS": "*i64", "PARENTS": "*i64", "DEPTH": "*i64",
           "ANC": "*i32", "N": "i32", "D": "i32", "K": "i32", "W": "i32"}
    out = []
    for n in (64, MAX_NODES):
        bn, bw = triton.next_power_of_2(n), triton.next_power_of_2(ancestor_words(n))
        cons = {"BLOCK_F": triton.next_power_of_2(2 * n), "BLOCK_N": bn, "BLOCK_W": bw}
        out.append(AotVariant(f"tree[N<={n}]", _tree_kernel, sig, cons, {"num_warps": _warps(bn, bw)}))
    return out
