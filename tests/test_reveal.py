"""reveal reference against a plain Python loop over positions (SPEC §4.2)."""
import math

import pytest
import torch

from trikern.kernels import reveal
from trikern.kernels.reveal import reveal_ref

MASK = 3


def loop_reveal(tokens, masked, logits, threshold, probs=None, noise=None):
    T, V = len(tokens), len(logits[0])
    cands, confs = [], []
    for i in range(T):
        row = [x if v != MASK else -math.inf for v, x in enumerate(logits[i])]
        if probs is None:
            c = max((v for v in range(V) if v != MASK), key=lambda v: (row[v], -v))
        else:
            c = max((v for v in range(V) if v != MASK), key=lambda v: (probs[i][v] / noise[i][v], -v))
        m = max(row)
        z = sum(math.exp(x - m) for x in row)
        cands.append(c)
        confs.append(math.exp(row[c] - m) / z)
    idx = [i for i in range(T) if masked[i]]
    out, still = list(tokens), list(masked)
    if not idx:
        return out, still
    best = max(idx, key=lambda i: (confs[i], -i))
    for i in idx:
        if confs[i] >= threshold or i == best:
            out[i], still[i] = cands[i], False
    return out, still


@pytest.mark.parametrize("T", [1, 2, 7, 16, 32])
@pytest.mark.parametrize("threshold", [0.0, 0.3, 0.9, 1.0])
def test_greedy_matches_loop(T, threshold):
    g = torch.Generator().manual_seed(T)
    V = 9
    for trial in range(10):
        logits = torch.randn(T, V, generator=g) * 3
        logits[:, MASK] += 4  # the mask column is often the argmax: it must never be chosen
        tokens = torch.randint(0, V, (T,), generator=g)
        masked = torch.rand(T, generator=g) < 0.6
        got_t, got_m = reveal_ref(tokens, masked, logits, threshold, MASK)
        want_t, want_m = loop_reveal(tokens.tolist(), masked.tolist(), logits.tolist(), threshold)
        assert got_t.tolist() == want_t and got_m.tolist() == want_m
        revealed = masked & ~got_m
        assert not (got_t[revealed] == MASK).any()
        if masked.any():
            assert revealed.sum() >= 1  # progress every pass


@pytest.mark.parametrize("T", [1, 5, 16])
def test_sampled_matches_loop(T):
    g = torch.Generator().manual_seed(50 + T)
    V = 8
    for trial in range(10):
        logits = torch.randn(T, V, generator=g) * 2
        probs = torch.softmax(logits / 0.7, -1)
        noise = torch.empty(T, V).exponential_(generator=g)
        tokens = torch.zeros(T, dtype=torch.long)
        masked = torch.ones(T, dtype=torch.bool)
        masked[0] = trial % 2 == 0
        got_t, got_m = reveal(tokens, masked, logits, 0.5, MASK, probs, noise, backend="torch")
        want_t, want_m = loop_reveal(tokens.tolist(), masked.tolist(), logits.tolist(), 0.5,
                                     probs.tolist(), noise.tolist())
        assert got_t.tolist() == want_t and got_m.tolist() == want_m


def test_nothing_masked_is_a_no_op():
    tokens = torch.tensor([5, 6, 7])
    masked = torch.zeros(3, dtype=torch.bool)
    t, m = reveal_ref(tokens, masked, torch.randn(3, 9), 0.0, MASK)
    assert t.tolist() == [5, 6, 7] and not m.any()


def test_seed_equal_to_mask_id_is_kept():
    """Masked positions come from the flag, not from tokens == mask_id."""
    tokens = torch.tensor([MASK, 0, 0])
    masked = torch.tensor([False, True, True])
    t, m = reveal_ref(tokens, masked, torch.randn(3, 9), 0.0, MASK)
    assert t[0] == MASK and not m.any()


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="masked"):
        reveal_ref(torch.zeros(3, dtype=torch.long), torch.zeros(2, dtype=torch.bool), torch.zeros(3, 4), 0.9, 1)
    with pytest.raises(ValueError, match="noise"):
        reveal_ref(torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool), torch.zeros(3, 4), 0.9, 1,
                   probs=torch.zeros(3, 4))
