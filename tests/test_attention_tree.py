"""The TREE attention pattern: the Triton kernel (interpreter) and the CPU backend against the fp32
reference, and the reference against the rule itself (a node sees its ancestors; a chain is CAUSAL at
sub_block 1 and QUADRATIC above). Edge cases: one node, a chain, a star, a tree as deep as the block,
trees of more than 32 nodes (several ancestor words), a sub-block of masks per node.

Tolerance as in test_attention: fp32 tight; fp16 within 2x torch's own fp16 SDPA error (plus a
floor); bf16 one ulp of the final rounding.
"""
from __future__ import annotations

import pytest
import torch
from test_attention import FP32_TOL, _cfg, assert_close, make_case, torch_sdpa

from trikern.kernels import attention
from trikern.kernels import tree as TR
from trikern.kernels.attention import (CAUSAL, QUADRATIC, TREE, TreeMask, attention_ref, attention_triton,
                                       chunk_mask)
from trikern.kernels.cpu import attention as cpu_attention


def chain(N):
    return torch.arange(-1, N - 1)


def star(N):
    return torch.tensor([-1] + [0] * (N - 1))


def built(N, D, K, seed):
    g = torch.Generator().manual_seed(seed)
    logp = torch.log_softmax(torch.randn(D, 50, generator=g), -1)
    return TR.build_tree_ref(logp, torch.tensor([1]), N, K).parents


def layout(parents, S=1):
    return TreeMask(TR.ancestors_from_parents(parents), S)


def run_tree(parents, S, G, D, n, dtype=torch.float32, cfg=None, Hkv=2, seed=0):
    tm = layout(parents, S)
    T = parents.shape[0] * S
    (q, k, v, kc, vc), clean = make_case(T, Hkv * G, Hkv, D, n, dtype=dtype, seed=seed)
    out = attention_triton(q, k, v, kc, vc, torch.tensor(n), TREE, tm, None, cfg)
    ref = attention_ref(*clean, n, TREE, tm)
    lowp = torch_sdpa(q, k, v, kc[:, :n], vc[:, :n], TREE, tm) if dtype == torch.float16 else None
    assert_close(out, ref, dtype, lowp)
    cpu = cpu_attention.attention(*(x.clone() for x in clean[:3]), torch.nan_to_num(clean[3]),
                                  torch.nan_to_num(clean[4]), n, TREE, tm)
    torch.testing.assert_close(cpu, ref.float(), **FP32_TOL)


def test_mask_follows_the_rule():
    """Written out from the sentences of the pattern, token by token."""
    parents = torch.tensor([-1, 0, 0, 1, 3, 2, 0])
    anc = {0: {0}, 1: {0, 1}, 2: {0, 2}, 3: {0, 1, 3}, 4: {0, 1, 3, 4}, 5: {0, 2, 5}, 6: {0, 6}}
    for S in (1, 3):
        m = chunk_mask(TREE, 7 * S, layout(parents, S))
        for qi in range(7 * S):
            for kj in range(7 * S):
                qn, qa, kn, ka = qi // S, qi % S, kj // S, kj % S
                want = (ka == 0 and kn in anc[qn]) or (qa > 0 and kn == qn)
                assert bool(m[qi, kj]) == want, (S, qi, kj)


@pytest.mark.parametrize("N", [1, 2, 9, 33])
def test_chain_is_causal_and_quadratic(N):
    assert torch.equal(chunk_mask(TREE, N, layout(chain(N))), chunk_mask(CAUSAL, N))
    for S in (2, 5):
        assert torch.equal(chunk_mask(TREE, N * S, layout(chain(N), S)), chunk_mask(QUADRATIC, N * S, S))


# (parents, sub_block, GQA ratio, head_dim, cache length, dtype, config index)
CASES = [
    ("one", star(1), 1, 4, 64, 5, torch.float32, 0),
    ("one-masks", star(1), 9, 1, 64, 0, torch.float32, 3),
    ("chain", chain(8), 1, 2, 64, 65, torch.float32, 5),
    ("chain-masks", chain(4), 5, 4, 64, 1, torch.float16, 8),
    ("star", star(17), 1, 1, 64, 7, torch.float32, 2),
    ("star-masks", star(6), 4, 2, 128, 3, torch.bfloat16, 6),
    ("deep", chain(16), 1, 8, 64, 0, torch.float16, 1),  # depth = B - 1 for B = 16
    ("tree40", built(40, 7, 4, seed=1), 1, 2, 64, 65, torch.float32, 4),  # two ancestor words
    ("tree33-masks", built(33, 5, 3, seed=2), 3, 1, 64, 9, torch.float32, 7),
    ("tree16", built(16, 7, 4, seed=3), 1, 4, 64, 31, torch.float16, 9),
]


@pytest.mark.parametrize("i", range(len(CASES)), ids=[c[0] for c in CASES])
def test_kernel_and_cpu_match_reference(i):
    _, parents, S, G, D, n, dtype, cfg = CASES[i]
    run_tree(parents, S, G, D, n, dtype, cfg=_cfg(cfg), seed=i)


def test_tree_attention_equals_causal_per_path():
    """Each node's output equals a CAUSAL pass over its root path alone: what makes the tree's
    verifier rows AR's rows."""
    parents = built(12, 5, 3, seed=4)
    (q, k, v, kc, vc), clean = make_case(12, 4, 2, 64, 6, seed=5)
    q, k, v, kc, vc = clean
    out = attention_triton(q, k, v, kc, vc, 6, TREE, layout(parents), None, _cfg(2))
    par = parents.tolist()
    for i in range(12):
        path, j = [], i
        while j >= 0:
            path.append(j)
            j = par[j]
        idx = torch.tensor(path[::-1])
        alone = attention_ref(q[idx], k[idx], v[idx], kc, vc, 6, CAUSAL)
        torch.testing.assert_close(out[i], alone[-1], **FP32_TOL)


def test_dispatcher_routes_tree():
    parents = built(10, 4, 3, seed=6)
    (q, k, v, kc, vc), _ = make_case(20, 4, 2, 64, 6, seed=7)
    kc, vc = torch.nan_to_num(kc), torch.nan_to_num(vc)
    tm = layout(parents, 2)
    outs = [attention_ref(q, k, v, kc, vc, 6, TREE, tm)]
    for be in ("triton", "cpu", "torch"):
        outs.append(attention(q, k, v, kc, vc, 6, TREE, tm, backend=be))
    for o in outs[1:]:
        torch.testing.assert_close(o, outs[0], **FP32_TOL)


@pytest.mark.parametrize("bad,match", [
    (lambda tm: 3, "must be a TreeMask"),
    (lambda tm: TreeMask(tm.ancestors, 0), "sub_block=0"),
    (lambda tm: TreeMask(tm.ancestors.long(), 1), "int32"),
    (lambda tm: TreeMask(tm.ancestors[:4], 1), "is not 4 nodes"),
])
def test_bad_tree_mask(bad, match):
    tm = layout(chain(6))
    (q, k, v, kc, vc), _ = make_case(6, 2, 1, 64, 2, S=4)
    for fn in (attention_triton, attention_ref, cpu_attention.attention):
        with pytest.raises(ValueError, match=match):
            fn(q, k, v, kc, vc, 2, TREE, bad(tm))


def test_aot_has_tree_variants():
    from trikern.kernels.attention import aot_variants

    tree = [v for v in aot_variants(90) if v.constexprs.get("PATTERN") == TREE]
    assert tree and all(v.signature["ANC"] == "*i32" for v in tree)


@pytest.mark.parametrize("arch", (80, 90, 121))
def test_tree_launches_only_tiles_that_compile_clean(arch):
    """TREE is offered (to the tuner and to check-kernels) only the tiles that compile without spills
    or a shared-memory overflow (`_TREE_SKIP`); every TREE shape still has a candidate."""
    from trikern.kernels.attention import _candidates, aot_variants, tree_tile_ok

    for rows in (4, 64, 128, 4352):
        cands = _candidates(arch, rows, 8, 4096, 128, 2, TREE)
        assert cands and all(tree_tile_ok(arch, c) for c in cands)
    tree_variants = [v for v in aot_variants(arch) if v.constexprs.get("PATTERN") == TREE]
    assert tree_variants and all(tree_tile_ok(arch, v.config) for v in tree_variants)
    if arch == 90:
        assert len(_candidates(arch, 128, 8, 4096, 128, 2, TREE)) < len(_candidates(arch, 128, 8, 4096, 128, 2))


@pytest.mark.parametrize("parents", [chain(1), chain(32), star(33), built(32, 6, 4, 2), built(70, 8, 4, 4)],
                         ids=["1 node", "chain 32", "star 33", "32", "70"])
def test_tree_bits_is_the_ancestor_relation(parents):
    """tree_bits, which chunk_mask and the CPU mask both read, against a parent walk: bit 31 of a word
    (one word, and several words) included."""
    N = parents.shape[0]
    want = torch.zeros(N, N, dtype=torch.bool)
    for i in range(N):
        j = i
        while j >= 0:
            want[i, j] = True
            j = int(parents[j])
    from trikern.kernels.attention import tree_bits
    assert torch.equal(tree_bits(TR.ancestors_from_parents(parents)), want)


@pytest.mark.parametrize("parents", [chain(1), chain(13), star(33), built(31, 6, 4, 1), built(32, 6, 4, 2),
                                     built(33, 6, 4, 3), built(70, 8, 4, 4), built(64, 12, 2, 5)],
                         ids=["1 node", "chain", "star 33", "31", "32", "33", "70", "64 deep"])
@pytest.mark.parametrize("S", [1, 2, 9])
def test_cpu_mask_is_the_rules_complement(parents, S):
    """The CPU backend's few-op TREE mask (bits shifted out of the ancestor words, sub-blocks from a
    kept layout) blocks exactly what chunk_mask does not allow: bit 31 of a word, several words, a
    node's own sub-block."""
    tm = layout(parents, S)
    got = cpu_attention._tree_blocked(tm, torch.device("cpu"))
    assert torch.equal(got, ~chunk_mask(TREE, parents.shape[0] * S, tm))
    if (parents.shape[0] * S) ** 2 > cpu_attention._KEPT_ELEMENTS:  # too large to keep: built each time
        assert (parents.shape[0], S, torch.device("cpu")) not in cpu_attention._TREE_LAYOUTS


def test_cpu_mask_is_kept_per_tree_mask():
    """The CPU backend builds a TREE mask once per TreeMask (every layer of a forward shares it) and
    keeps it on that object, not in module state: a second tree of the same shape gets its own mask."""
    n, S = 5, 2
    a, b = layout(chain(6), S), layout(star(6), S)
    (q, k, v, kc, vc), _ = make_case(6 * S, 4, 2, 8, n, dtype=torch.float32, seed=3)
    kc, vc = torch.nan_to_num(kc), torch.nan_to_num(vc)
    out_a = cpu_attention.attention(q, k, v, kc, vc, n, TREE, a)
    assert len(a.derived) == 1 and not b.derived
    out_b = cpu_attention.attention(q, k, v, kc, vc, n, TREE, b)
    for tm, out in ((a, out_a), (b, out_b)):
        torch.testing.assert_close(out, attention_ref(q, k, v, kc, vc, n, TREE, tm), **FP32_TOL)
        again = cpu_attention.attention(q, k, v, kc, vc, n, TREE, tm)  # from the kept mask
        assert torch.equal(again, out) and len(tm.derived) == 1
    assert not torch.equal(out_a, out_b)
