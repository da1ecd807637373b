"""draft_tree reference against the layout written out by hand from SPEC §4.2-4.4."""
import pytest
import torch

from trikern.kernels import draft_tree
from trikern.kernels.draft_tree import draft_tree_ref

MASK = 100


def expected(anchors, n, S):
    toks, pos = [], []
    for i, d in enumerate(anchors):
        toks.append(d)
        pos.append(n + i)
        for a in range(1, S):
            toks.append(MASK)
            pos.append(n + i + a)
    return toks, pos


@pytest.mark.parametrize("B", [1, 2, 3, 8, 32])
@pytest.mark.parametrize("n", [0, 1, 17])
def test_linear_block(B, n):
    toks, pos = draft_tree_ref(torch.tensor([42]), torch.tensor(n), B, MASK)
    assert toks.tolist() == [42] + [MASK] * (B - 1)
    assert pos.tolist() == list(range(n, n + B))


@pytest.mark.parametrize("B", [1, 2, 5, 8, 16])
@pytest.mark.parametrize("n", [0, 3])
def test_quadratic_layout(B, n):
    g = torch.Generator().manual_seed(B)
    anchors = torch.randint(0, 99, (B,), generator=g)
    toks, pos = draft_tree(anchors, torch.tensor(n), B + 1, MASK, backend="torch")
    assert (toks.tolist(), pos.tolist()) == expected(anchors.tolist(), n, B + 1)
    assert toks.dtype == pos.dtype == torch.long


def test_int_cache_len_and_first_quadratic_step():
    toks, pos = draft_tree_ref(torch.tensor([7]), 5, 9, MASK)
    assert (toks.tolist(), pos.tolist()) == expected([7], 5, 9)


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="anchors"):
        draft_tree_ref(torch.tensor([], dtype=torch.long), 0, 4, MASK)
    with pytest.raises(ValueError, match="anchors"):
        draft_tree_ref(torch.tensor([1.0]), 0, 4, MASK)
    with pytest.raises(ValueError, match="sub_block"):
        draft_tree_ref(torch.tensor([1]), 0, 0, MASK)
