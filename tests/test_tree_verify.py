"""Tree verification (kernels/tree_verify.py) against a plain Python walk of the rule, the chain case
against kernels.verify, the sampled rule's one-step law against p, and the cache compaction."""
import pytest
import torch

from trikern.kernels import tree as TR
from trikern.kernels.tree_verify import tree_verify
from trikern.kernels.verify import verify_ref


def random_tree(N, D, K, V, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(D, V, generator=g) * 2, -1)
    return TR.build_tree_ref(logp, torch.tensor([int(torch.randint(0, V, (1,), generator=g))]), N, K)


def children(tree, u):
    return [i for i in range(1, len(tree.parents)) if int(tree.parents[i]) == u]


def walk_greedy(tree, target):
    u, out = 0, []
    while True:
        a = max(range(target.shape[1]), key=lambda v: (float(target[u, v]), -v))
        nxt = [c for c in children(tree, u) if int(tree.tokens[c]) == a]
        if not nxt:
            return out + [a], u
        u = nxt[0]
        out.append(a)


def walk_sampled(tree, p, uni, noise):
    u, out = 0, []
    while True:
        row = p[u].tolist()
        mass, taken = 0.0, None
        for c in children(tree, u):
            x = int(tree.tokens[c])
            if row[x] > 0 and float(uni[c]) * (1 - mass) < row[x]:
                taken = c
                break
            mass += row[x]
        if taken is None:
            r = list(row)
            for c in children(tree, u):
                r[int(tree.tokens[c])] = 0.0
            if sum(r) <= 0:
                r = list(row)
            return out + [max(range(len(r)), key=lambda v: (r[v] / float(noise[v]), -v))], u
        u = taken
        out.append(int(tree.tokens[u]))


def plant(tree, target, seed, stop=0.2):
    """Make the verifier agree with the tree along a random path for a random number of steps."""
    g = torch.Generator().manual_seed(seed)
    u = 0
    while True:
        kids = children(tree, u)
        if not kids or torch.rand(1, generator=g) < stop:
            return
        c = kids[int(torch.randint(0, len(kids), (1,), generator=g))]
        target[u, int(tree.tokens[c])] = target[u].max() + 1
        u = c


@pytest.mark.parametrize("N,D,K", [(1, 0, 1), (2, 1, 1), (8, 7, 1), (8, 7, 4), (16, 7, 4), (33, 15, 3), (64, 7, 8)])
def test_greedy_matches_walk(N, D, K):
    V = 12
    for trial in range(12):
        tree = random_tree(N, D, K, V, seed=trial)
        target = torch.randn(N, V, generator=torch.Generator().manual_seed(50 + trial))
        plant(tree, target, seed=trial)
        out, count, path, last = tree_verify(*tree, target, depth_limit=D)
        want, c = walk_greedy(tree, target)
        assert out.tolist() == want + [-1] * (D + 1 - len(want))
        assert int(count) == len(want) and int(last) == c
        # the path: c's ancestors by depth
        chain, j = [], c
        while j >= 0:
            chain.append(j)
            j = int(tree.parents[j])
        assert path.tolist() == chain[::-1] + [-1] * (D + 1 - len(chain))


@pytest.mark.parametrize("N,D,K", [(1, 0, 1), (8, 7, 4), (16, 7, 4), (33, 15, 3), (64, 7, 8)])
def test_sampled_matches_walk(N, D, K):
    V = 6
    for trial in range(20):
        tree = random_tree(N, D, K, V, seed=100 + trial)
        g = torch.Generator().manual_seed(trial)
        p = torch.softmax(torch.randn(N, V, generator=g) * 2, -1)
        if trial % 3 == 0:
            p[:, 1] = 0  # zero-probability tokens are never accepted
            p = p / p.sum(-1, keepdim=True)
        if trial % 5 == 0:
            p = torch.zeros(N, V)
            p[torch.arange(N), tree.tokens.roll(-1)] = 1.0  # one-hot rows: some residuals have no mass
        uni, noise = torch.rand(N, generator=g), torch.empty(V).exponential_(1.0, generator=g)
        out, count, _, last = tree_verify(*tree, p, uni, noise, depth_limit=D)
        want, c = walk_sampled(tree, p, uni, noise)
        assert out.tolist() == want + [-1] * (D + 1 - len(want))
        assert int(count) == len(want) and int(last) == c


@pytest.mark.parametrize("B", [1, 2, 5, 8])
def test_chain_greedy_is_verify(B):
    """The top-1 chain of B nodes: the same tokens and count as kernels.verify on its drafts."""
    for trial in range(10):
        g = torch.Generator().manual_seed(trial)
        logp = torch.log_softmax(torch.randn(B - 1, 9, generator=g), -1)
        tree = TR.build_tree_ref(logp, torch.tensor([4]), B, 1)
        target = torch.randn(B, 9, generator=g)
        plant(tree, target, seed=trial)
        out, count, _, _ = tree_verify(*tree, target, depth_limit=B - 1)
        want, wcount = verify_ref(tree.tokens[1:], target)
        assert torch.equal(out, want) and int(count) == int(wcount)


def test_sampled_one_step_law_is_p():
    """Root with four children: the emitted first token has law p exactly, whichever children are
    offered (frequencies of 40000 seeded draws within 5 sigma)."""
    V, n = 6, 40000
    tree = TR.build_tree_ref(torch.log(torch.tensor([[0.05, 0.4, 0.3, 0.15, 0.05, 0.05]])), torch.tensor([0]), 5, 4)
    p_root = torch.tensor([0.1, 0.05, 0.2, 0.25, 0.3, 0.1])
    p = torch.cat([p_root[None], torch.full((4, V), 1 / V)])
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(V)
    for _ in range(n):
        out, _, _, _ = tree_verify(*tree, p, torch.rand(5, generator=g),
                                   torch.empty(V).exponential_(1.0, generator=g), depth_limit=1)
        counts[int(out[0])] += 1
    freq = counts / n
    sigma = (p_root * (1 - p_root) / n).sqrt()
    assert ((freq - p_root).abs() <= 5 * sigma + 1e-9).all(), (freq, p_root)


@pytest.mark.parametrize("S", [1, 3])
def test_cache_keeps_the_path(S):
    N, D, V = 12, 5, 8
    tree = random_tree(N, D, 3, V, seed=4)
    target = torch.randn(N, V, generator=torch.Generator().manual_seed(9))
    plant(tree, target, seed=11, stop=0.0)
    layers, H, hd, n = 2, 2, 3, 5
    slots = n + N * S + 2
    k = torch.randn(layers, H, slots, hd)
    v = torch.randn(layers, H, slots, hd)
    k0, v0 = k.clone(), v.clone()
    length = torch.tensor(n)
    out, count, path, _ = tree_verify(*tree, target, depth_limit=D, k_cache=k, v_cache=v, cache_len=length,
                                      stride=S)
    c = int(count)
    assert int(length) == n + c
    assert torch.equal(k[:, :, :n], k0[:, :, :n])
    for j in range(c):
        src = n + int(path[j]) * S
        assert torch.equal(k[:, :, n + j], k0[:, :, src]) and torch.equal(v[:, :, n + j], v0[:, :, src])
    assert c >= 3 and any(int(path[j]) != j for j in range(c))  # a path whose slots really moved


def test_bad_input():
    tree = random_tree(4, 3, 2, 5, seed=0)
    target = torch.randn(4, 5)
    with pytest.raises(ValueError, match="target must be \\[N=4, V\\]"):
        tree_verify(*tree, target[:3], depth_limit=3)
    with pytest.raises(ValueError, match="noise \\[V=5\\]"):
        tree_verify(*tree, target.softmax(-1), torch.rand(4), None, depth_limit=3)
    with pytest.raises(ValueError, match="ancestors must be"):
        tree_verify(tree.tokens, tree.parents, tree.depth, tree.ancestors.long(), target, depth_limit=3)
    with pytest.raises(ValueError, match="stride=0"):
        tree_verify(*tree, target, depth_limit=3, stride=0)


@pytest.mark.parametrize("sampled", [False, True])
def test_cpu_backend_equals_reference(sampled):
    """The CPU backend's host-side walk gives the reference's outputs and cache, bit for bit."""
    from trikern.kernels.cpu import tree_verify as cpu

    for trial, (N, D, K) in enumerate([(1, 0, 1), (8, 7, 1), (16, 7, 4), (33, 15, 3), (64, 7, 8)] * 4):
        V = 6
        tree = random_tree(N, D, K, V, seed=200 + trial)
        g = torch.Generator().manual_seed(trial)
        target = torch.randn(N, V, generator=g) * 2
        plant(tree, target, seed=trial)
        uni = noise = None
        if sampled:
            target = torch.softmax(target, -1)
            if trial % 5 == 0:
                target = torch.zeros(N, V)
                target[torch.arange(N), tree.tokens.roll(-1)] = 1.0
            uni, noise = torch.rand(N, generator=g), torch.empty(V).exponential_(1.0, generator=g)
        S = 1 + trial % 3
        caches = []
        for fn in (tree_verify, cpu.tree_verify):
            k = torch.randn(2, 2, 4 + N * S, 3, generator=torch.Generator().manual_seed(trial))
            v = k + 1
            n = torch.tensor(4)
            res = fn(*tree, target, uni, noise, depth_limit=D, k_cache=k, v_cache=v, cache_len=n, stride=S)
            caches.append((res, k, v, n))
        (r1, k1, v1, n1), (r2, k2, v2, n2) = caches
        for a, b in zip(r1, r2):
            assert a.dtype == b.dtype and a.shape == b.shape and torch.equal(a, b), (trial, r1, r2)
        assert int(n1) == int(n2) and torch.equal(k1, k2) and torch.equal(v1, v2)
