"""Draft-tree construction (kernels/tree.py): the Triton kernel (interpreter) equals the reference over
node budgets, depths, children bounds and ties; the reference is checked against the rule itself
(best-first = the N best paths, a parent before its children, siblings in rank order)."""
import itertools
import math

import pytest
import torch

from trikern.kernels import tree as T


def logp_for(D, V, seed, temp=1.0):
    g = torch.Generator().manual_seed(seed)
    return torch.log_softmax(torch.randn(D, V, generator=g) / temp, -1)


def check_same(logp, root, N, K):
    want = T.build_tree_ref(logp, root, N, K)
    got = T.build_tree_triton(logp, root, N, K)
    for name, g, w in zip(want._fields, got, want):
        assert g.dtype == w.dtype and g.shape == w.shape, name
        assert torch.equal(g, w), (name, g, w)
    return want


def path_score(logp, tree, i):
    s = 0.0
    while i > 0:
        s += float(logp[tree.depth[i] - 1, tree.tokens[i]])
        i = int(tree.parents[i])
    return s


@pytest.mark.parametrize("N,D,K,V", [(1, 0, 1, 5), (1, 7, 4, 50), (2, 1, 1, 9), (8, 7, 4, 50), (8, 7, 1, 50),
                                     (16, 7, 4, 50), (31, 15, 3, 37), (33, 15, 8, 37), (64, 7, 8, 101),
                                     (64, 15, 4, 101), (100, 31, 6, 64), (256, 15, 8, 128)])
def test_kernel_equals_reference(N, D, K, V):
    root = torch.tensor([7])
    tree = check_same(logp_for(D, V, seed=N * 31 + D), root, N, K)
    assert int(tree.tokens[0]) == 7 and int(tree.parents[0]) == -1 and int(tree.depth[0]) == 0


@pytest.mark.parametrize("seed", range(4))
def test_reference_is_best_first(seed):
    """The N - 1 non-root nodes are the N - 1 best paths of the K-ary tree (brute force), a parent
    precedes its children, depths add up, and siblings come in rank order."""
    D, V, K, N = 3, 6, 3, 12
    logp = logp_for(D, V, seed, temp=0.7)
    tree = T.build_tree_ref(logp, torch.tensor([0]), N, K)
    vals, toks = T.top_candidates(logp, K)
    every = [sum(float(vals[d, r]) for d, r in enumerate(ranks))
             for depth in range(1, D + 1) for ranks in itertools.product(range(K), repeat=depth)]
    best = sorted(every, reverse=True)[: N - 1]
    got = sorted((path_score(logp, tree, i) for i in range(1, N)), reverse=True)
    assert got == pytest.approx(best, abs=1e-5)
    par, dep = tree.parents.tolist(), tree.depth.tolist()
    for i in range(1, N):
        assert 0 <= par[i] < i and dep[i] == dep[par[i]] + 1
        sibs = [j for j in range(1, N) if par[j] == par[i]]
        ranks = [toks[dep[j] - 1].tolist().index(int(tree.tokens[j])) for j in sibs]
        assert ranks == list(range(len(sibs)))  # rank order, no rank skipped


@pytest.mark.parametrize("B", [1, 2, 3, 8, 16, 32])
def test_top1_chain(B):
    """K = 1 and N = B: the chain of today's self-speculation (the argmax at every depth)."""
    logp = logp_for(B - 1, 40, seed=B)
    tree = check_same(logp, torch.tensor([3]), B, 1)
    assert tree.parents.tolist() == list(range(-1, B - 1))
    assert tree.depth.tolist() == list(range(B))
    assert tree.tokens[1:].tolist() == logp.argmax(-1).tolist()
    assert torch.equal(tree.ancestors, T.ancestors_from_parents(tree.parents))


def test_ties_go_to_the_candidate_offered_first():
    """All equal probabilities: every score tie is broken by slot, identically in both; the tree is
    then filled level by level (breadth first: shallower paths score higher)."""
    D, V = 4, 6
    logp = torch.full((D, V), -math.log(V))
    tree = check_same(logp, torch.tensor([1]), 40, 3)
    dep = tree.depth.tolist()
    assert dep == sorted(dep)  # breadth first
    assert dep.count(1) == 3 and dep.count(2) == 9 and dep.count(3) == 27
    # Exact ties between different depths' products: probabilities 1/2 and 1/4 -> log-sum ties.
    logp = torch.log(torch.tensor([[0.5, 0.25, 0.25], [0.5, 0.25, 0.25], [0.5, 0.25, 0.25]]))
    for N in (2, 5, 9, 14):
        check_same(logp, torch.tensor([2]), N, 3)


def test_excluded_tokens_are_ordered_last():
    """-inf log-probabilities (the mask id, a filtered token) are clamped: they can fill a tree whose
    budget needs them, after every finite candidate, and never make a NaN."""
    logp = torch.log_softmax(torch.tensor([[3.0, 1.0, 0.0, -1.0]] * 2), -1)
    logp[:, 0] = float("-inf")
    tree = check_same(logp, torch.tensor([0]), 21, 4)  # the full tree: 1 + 4 + 16
    excluded = [int(tree.tokens[i]) == 0 or (int(tree.parents[i]) > 0 and int(tree.tokens[tree.parents[i]]) == 0)
                for i in range(1, 21)]
    assert excluded == sorted(excluded)  # every path through an excluded token comes after the others
    assert sum(excluded) == 1 + 4 + 3  # the excluded child of the root, its children, its siblings' own


def test_ancestor_words():
    """Bit j of row i set iff j is i or an ancestor, across several 32-bit words (bit 31 included)."""
    logp = logp_for(20, 30, seed=3)
    tree = check_same(logp, torch.tensor([5]), 100, 4)
    anc = T.ancestors_from_parents(tree.parents)
    assert torch.equal(tree.ancestors, anc)
    par = tree.parents.tolist()
    for i in range(100):
        chain, j = {i}, i
        while par[j] >= 0:
            j = par[j]
            chain.add(j)
        bits = {j for j in range(100) if (int(tree.ancestors[i, j // 32]) >> (j % 32)) & 1}
        assert bits == chain


def test_bad_input():
    logp, root = logp_for(3, 5, 0), torch.tensor([1])
    with pytest.raises(ValueError, match="nodes=50 but a tree of depth 3"):
        T.build_tree_ref(logp, root, 50, 3)
    with pytest.raises(ValueError, match="top_k=0"):
        T.build_tree_triton(logp, root, 4, 0)
    with pytest.raises(ValueError, match="root must be a \\[1\\] int64"):
        T.build_tree_ref(logp, torch.tensor([1, 2]), 4, 2)
    with pytest.raises(ValueError, match="logp must be \\[D, V\\]"):
        T.build_tree_ref(logp[0], root, 4, 2)
    with pytest.raises(ValueError, match="at most 256"):
        T.build_tree_triton(logp_for(15, 50, 0), root, 300, 8)
    with pytest.raises(ValueError, match="must precede"):
        T.ancestors_from_parents(torch.tensor([-1, 2, 0]))
