"""draft_tree Triton kernel (interpreter) against draft_tree_ref: layouts, block sizes, configs, cache lengths."""
import importlib

import pytest
import torch

from trikern.kernels import draft_tree

D_ = importlib.import_module("trikern.kernels.draft_tree")
MASK = 100


def anchors_for(A, seed):
    return torch.randint(0, 99, (A,), generator=torch.Generator().manual_seed(seed))


def check(anchors, n, S, **kw):
    got = D_.draft_tree_triton(anchors, n, S, MASK, **kw)
    want = D_.draft_tree_ref(anchors, n, S, MASK)
    for g, w in zip(got, want):
        assert g.dtype == torch.long and g.shape == w.shape
        assert torch.equal(g, w)


@pytest.mark.parametrize("B", [1, 2, 4, 8, 16, 32])
def test_linear_and_quadratic_every_config(B):
    for i, cfg in enumerate(D_.CONFIGS):
        n = torch.tensor(3 * i + B)
        check(anchors_for(1, B), n, B, config=cfg)  # linear: [seed, M x (B-1)]
        check(anchors_for(B, B), n, B + 1, config=cfg)  # quadratic step: B sub-blocks of B+1
        check(anchors_for(1, B), n, B + 1, config=cfg)  # quadratic first step


@pytest.mark.parametrize("n", [0, 1, 31])
def test_int_cache_len_and_zero(n):
    check(anchors_for(5, n), n, 6, config=D_.CONFIGS[0])
    check(anchors_for(5, n), torch.tensor(n), 6, config=D_.CONFIGS[0])


def test_positions_past_int32():
    """n is read as int64 on the device: a long-context cache length is not wrapped."""
    n = 3_000_000_000
    check(anchors_for(3, 1), torch.tensor(n), 4, config=D_.CONFIGS[1])
    check(anchors_for(3, 1), n, 4, config=D_.CONFIGS[1])


def test_int32_cache_len_tensor():
    got = D_.draft_tree_triton(anchors_for(2, 0), torch.tensor(7, dtype=torch.int32), 3, MASK,
                               config=D_.CONFIGS[0])
    assert got[1].tolist() == [7, 8, 9, 8, 9, 10]


def test_more_entries_than_one_program():
    """A*S past the largest BLOCK: several programs, the last one partial."""
    A, S = 33, 33  # 1089 entries
    check(anchors_for(A, 5), torch.tensor(9), S, config=D_.CONFIGS[-1])


@pytest.mark.parametrize("B", [3, 8])
def test_dispatcher_triton_matches_torch(B):
    a, n = anchors_for(B, 2), torch.tensor(11)
    got = draft_tree(a, n, B + 1, MASK, backend="triton")
    want = draft_tree(a, n, B + 1, MASK, backend="torch")
    assert all(torch.equal(g, w) for g, w in zip(got, want))


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="anchors"):
        D_.draft_tree_triton(torch.tensor([1.0]), 0, 4, MASK)
    with pytest.raises(ValueError, match="sub_block"):
        D_.draft_tree_triton(torch.tensor([1]), 0, 0, MASK)
    with pytest.raises(ValueError, match="cache_len"):
        D_.draft_tree_triton(torch.tensor([1]), torch.tensor(2.0), 4, MASK)
    with pytest.raises(ValueError, match="cache_len"):
        D_.draft_tree_triton(torch.tensor([1]), torch.tensor([2]), 4, MASK)
