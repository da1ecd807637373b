"""reveal Triton kernels (interpreter) against reveal_ref: greedy and Gumbel-max candidates, the mask id
never a candidate, none / some / all above the threshold, ties, every scan config, the dispatcher.

Outputs are exact. The kernel's confidences differ from torch.softmax's by fp32 rounding only, so
the cases keep every confidence at least MARGIN away from the threshold (`clear_threshold`).
"""
import importlib

import pytest
import torch

from trikern.kernels import reveal

R_ = importlib.import_module("trikern.kernels.reveal")
MASK = 3
TS = [1, 2, 7, 8, 31]
VS = [7, 100, 1000, 1025]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
MARGIN = 1e-4


def confidences(logits, mask_id, probs=None, noise=None):
    x = logits.float().clone()
    x[:, mask_id] = float("-inf")
    if probs is None:
        cand = x.argmax(-1)
    else:
        cand = (probs.float().masked_fill(torch.arange(x.shape[1]) == mask_id, float("-inf")) / noise).argmax(-1)
    return torch.softmax(x, -1).gather(1, cand[:, None])[:, 0]


def clear_threshold(thr, conf):
    """thr moved (up) until no confidence lies within MARGIN of it; 0 and 1 are kept as they are."""
    if thr in (0.0, 1.0):
        return thr
    while ((conf - thr).abs() < MARGIN).any():
        thr += 3 * MARGIN
    return thr


def case(T, V, dtype, sampled, seed, mask_id=MASK, peaky=0.5):
    """A block: random logits (the mask column made the argmax), some rows peaked on one token so
    that their confidence is high, a random mask pattern with at least one masked position."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(T, V, generator=g) * 2
    peak = torch.rand(T, generator=g) < peaky
    hot = torch.randint(0, V, (T,), generator=g)
    logits[peak, hot[peak]] += 12
    logits[:, mask_id] = logits.max(-1).values + 5  # the argmax of every row: must be excluded
    logits = logits.to(dtype)
    tokens = torch.randint(0, V, (T,), generator=g)
    masked = torch.rand(T, generator=g) < 0.6
    masked[int(torch.randint(0, T, (1,), generator=g))] = True
    probs = noise = None
    if sampled:
        probs = torch.softmax(logits.float() / 0.7, -1)
        noise = torch.empty(T, V).exponential_(1.0, generator=g)
    return tokens, masked, logits, probs, noise


def run_both(tokens, masked, logits, thr, probs, noise, config, mask_id=MASK):
    got = R_.reveal_triton(tokens, masked, logits, thr, mask_id, probs, noise, config=config)
    want = R_.reveal_ref(tokens, masked, logits, thr, mask_id, probs, noise)
    assert got[0].dtype == torch.long and got[1].dtype == torch.bool
    assert got[0].tolist() == want[0].tolist()
    assert got[1].tolist() == want[1].tolist()
    revealed = masked & ~got[1]
    assert not (got[0][revealed] == mask_id).any()
    assert revealed.sum() >= int(masked.any())  # progress on every pass
    return revealed


@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("T", TS)
def test_sweep(T, V):
    i = TS.index(T) + VS.index(V)  # rotate rule, dtype, threshold and config over the grid
    sampled, dtype = i % 2 == 1, DTYPES[(i // 2 + TS.index(T)) % 3]
    tokens, masked, logits, probs, noise = case(T, V, dtype, sampled, seed=T * 11 + V)
    thr = clear_threshold([0.0, 0.5, 0.9, 1.0][i % 4], confidences(logits, MASK, probs, noise))
    run_both(tokens, masked, logits, thr, probs, noise, R_.CONFIGS[i % len(R_.CONFIGS)])


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("sampled", [False, True])
def test_none_some_all_above_threshold(dtype, sampled):
    T, V = 8, 1025
    tokens, masked, logits, probs, noise = case(T, V, dtype, sampled, seed=4)
    masked[:] = True
    conf = confidences(logits, MASK, probs, noise)
    assert (conf > 0.9).any() and (conf < 0.5).any()  # the case has both kinds of rows
    n_revealed = []
    for thr in (1.0, clear_threshold(0.5, conf), 0.0):
        n_revealed.append(int(run_both(tokens, masked, logits, thr, probs, noise, R_.CONFIGS[1]).sum()))
    assert n_revealed[0] == 1 and 1 < n_revealed[1] < T and n_revealed[2] == T


def test_mask_id_never_a_candidate():
    """The mask column is the argmax of every row, and also the only mass of `probs` (mask id 0,
    where a zero-filled mask column would win the tie at index 0)."""
    T, V = 5, 100
    for mask_id in (0, 99, 42):
        tokens, masked, logits, probs, noise = case(T, V, torch.float32, True, seed=mask_id, mask_id=mask_id)
        probs = torch.zeros(T, V)
        probs[:, mask_id] = 1.0
        revealed = run_both(tokens, masked, logits, 0.0, probs, noise, R_.CONFIGS[0], mask_id)
        assert torch.equal(revealed, masked)  # threshold 0: every masked position, none of them the mask
        run_both(tokens, masked, logits, 0.0, None, None, R_.CONFIGS[0], mask_id)


@pytest.mark.parametrize("sampled", [False, True])
def test_candidate_ties_lowest_index(sampled):
    """Equal maxima either side of the 1024 tile / split boundary and within a tile."""
    T, V = 3, 1025
    logits = torch.zeros(T, V)
    logits[0, [MASK, 17, 1024]] = 5.0
    logits[1, [1023, 1024]] = 5.0
    logits[2, [900, 1000]] = 5.0
    probs, noise = (torch.softmax(logits, -1), torch.ones(T, V)) if sampled else (None, None)
    masked = torch.ones(T, dtype=torch.bool)
    tokens = torch.zeros(T, dtype=torch.long)
    for cfg in (R_.CONFIGS[0], R_.CONFIGS[1]):
        got, still = R_.reveal_triton(tokens, masked, logits, 0.0, MASK, probs, noise, config=cfg)
        assert got.tolist() == [17, 1023, 900] and not still.any()
        run_both(tokens, masked, logits, 0.0, probs, noise, cfg)


def test_most_confident_ties_and_second_row_chunk():
    """T past the apply kernel's row chunk: equal best confidences in both chunks -> the lowest index;
    then the only best in the second chunk."""
    T, V = R_.APPLY_BLOCK_T + 9, 7
    logits = torch.zeros(T, V)
    logits[:, 1] = 1.0
    masked = torch.ones(T, dtype=torch.bool)
    masked[:4] = False
    tokens = torch.arange(T)
    for hot in ([10, 35], [36]):
        lg = logits.clone()
        lg[hot, 2] = 3.0
        revealed = run_both(tokens, masked, lg, 1.0, None, None, R_.CONFIGS[0])
        assert revealed.nonzero()[:, 0].tolist() == hot[:1]


def test_threshold_is_inclusive():
    """Confidences of exactly 1/2 and 1 (the other columns at -inf) reveal at thresholds 1/2 and 1."""
    V = 7
    logits = torch.full((4, V), float("-inf"))
    logits[0, [1, 5]] = 2.0     # 1/2
    logits[1, 6] = 0.0          # 1
    logits[2, [0, 2, 4]] = 1.0  # 1/3
    logits[3] = 0.1 * torch.arange(V, dtype=torch.float32)  # ~0.22
    masked = torch.ones(4, dtype=torch.bool)
    tokens = torch.zeros(4, dtype=torch.long)
    assert run_both(tokens, masked, logits, 0.5, None, None, R_.CONFIGS[0]).tolist() == [True, True, False, False]
    assert run_both(tokens, masked, logits, 1.0, None, None, R_.CONFIGS[0]).tolist() == [False, True, False, False]


def test_nothing_or_everything_masked():
    T, V = 6, 100
    tokens, masked, logits, _, _ = case(T, V, torch.float32, False, seed=8)
    for m in (torch.zeros(T, dtype=torch.bool), torch.ones(T, dtype=torch.bool)):
        for thr in (0.0, 1.0):
            run_both(tokens, m, logits, thr, None, None, R_.CONFIGS[2])
    got, still = R_.reveal_triton(tokens, torch.zeros(T, dtype=torch.bool), logits, 0.0, MASK, None, None,
                                  config=R_.CONFIGS[0])
    assert torch.equal(got, tokens) and not still.any()


@pytest.mark.parametrize("sampled", [False, True])
def test_every_config(sampled):
    T, V = 3, 1025
    for i, cfg in enumerate(R_.CONFIGS):
        tokens, masked, logits, probs, noise = case(T, V, torch.float32, sampled, seed=i)
        thr = clear_threshold(0.5, confidences(logits, MASK, probs, noise))
        run_both(tokens, masked, logits, thr, probs, noise, cfg)


def test_strided_logits_and_empty_block():
    T, V = 4, 100
    tokens, masked, logits, _, _ = case(T, V + 20, torch.float32, False, seed=2)
    x = logits[:, 10:10 + V]  # a row-strided view
    thr = clear_threshold(0.5, confidences(x, MASK))
    run_both(tokens, masked, x, thr, None, None, R_.CONFIGS[0])
    e = torch.zeros(0, dtype=torch.long)
    got = R_.reveal_triton(e, e.bool(), torch.zeros(0, V), 0.9, MASK, None, None)
    assert got[0].shape == (0,) and got[1].shape == (0,)


@pytest.mark.parametrize("sampled", [False, True])
def test_dispatcher_triton_matches_torch(sampled):
    tokens, masked, logits, probs, noise = case(5, 100, torch.float32, sampled, seed=12)
    thr = clear_threshold(0.5, confidences(logits, MASK, probs, noise))
    got = reveal(tokens, masked, logits, thr, MASK, probs, noise, backend="triton")
    want = reveal(tokens, masked, logits, thr, MASK, probs, noise, backend="torch")
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def test_bad_inputs_named():
    tok, m = torch.zeros(3, dtype=torch.long), torch.zeros(3, dtype=torch.bool)
    with pytest.raises(ValueError, match="masked"):
        R_.reveal_triton(tok, m[:2], torch.zeros(3, 4), 0.9, 1, None, None)
    with pytest.raises(ValueError, match="noise"):
        R_.reveal_triton(tok, m, torch.zeros(3, 4), 0.9, 1, torch.zeros(3, 4), None)
    with pytest.raises(TypeError, match="logits"):
        R_.reveal_triton(tok, m, torch.zeros(3, 4, dtype=torch.long), 0.9, 1, None, None)
    with pytest.raises(ValueError, match="vocabulary"):
        R_.reveal_triton(tok, m, torch.zeros(3, 0), 0.9, 1, None, None)
