"""Draft-tree decoding with backend="triton" (the tree kernel and the TREE attention pattern inside a
full model, under TRITON_INTERPRET=1 on CPU) gives the same tokens as backend="torch", greedy and
sampled (same seed, same coins)."""

import pytest
from decode_helpers import run, torch_and_triton_models


@pytest.fixture(scope="module")
def models():
    return torch_and_triton_models()


@pytest.mark.parametrize("mode,T", [("spec-linear", 0.0), ("spec-quadratic", 0.0), ("spec-quadratic", 1.0)])
def test_triton_tree_decode_equals_torch(models, mode, T):
    ref, tri = models
    kw = dict(max_new_tokens=7, block_size=4, tree_nodes=9, temperature=T, seed=3)
    want, want_stats, _ = run(ref, [1, 2, 3], mode, **kw)
    got, got_stats, _ = run(tri, [1, 2, 3], mode, **kw)
    assert got == want
    assert got_stats.forwards == want_stats.forwards
    assert got_stats.acceptance_lengths == want_stats.acceptance_lengths
