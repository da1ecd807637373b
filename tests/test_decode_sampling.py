"""Sampled self-speculation is lossless: the first generated tokens follow AR's distribution.

On a tiny-vocabulary model the exact AR law of the first three tokens is enumerated (V + V^2
forwards, with the same temperature / top-k / top-p filtering), and many seeded generations of
each mode are compared with it by a chi-square goodness-of-fit test (fixed seeds: deterministic).
AR itself is checked the same way, which validates the harness.
"""
import itertools

import pytest
import torch
from decode_helpers import run, run_cycle
from scipy.stats import chisquare
from util import random_model, tiny_config

from trikern.sampling import probs

V, N = 8, 500


@pytest.fixture(scope="module")
def model():
    cfg = tiny_config(vocab_size=V, mask_token_id=V - 1, eos_token_id=V - 2, hidden_size=32,
                      intermediate_size=48, num_hidden_layers=1, num_attention_heads=2,
                      num_key_value_heads=1, head_dim=16, max_position_embeddings=64)
    return random_model(cfg, seed=5, std=0.35)


def exact_law(model, prompt, T, top_k, top_p):
    """{(t1, t2, t3): probability} of AR sampling, by enumeration."""
    def dist(ids):
        logits = model(torch.tensor(ids), torch.arange(len(ids)))[-1:]
        return probs(logits, T, top_k, top_p)[0].tolist()

    law = {}
    p1 = dist(prompt)
    for a in range(V):
        if p1[a] == 0:
            continue
        p2 = dist(prompt + [a])
        for b in range(V):
            if p2[b] == 0:
                continue
            p3 = dist(prompt + [a, b])
            for c in range(V):
                law[(a, b, c)] = p1[a] * p2[b] * p3[c]
    return law


def gof(counts, law, n):
    """Chi-square p-value, cells with expected count < 5 pooled into one."""
    obs, exp, pool_o, pool_e = [], [], 0, 0.0
    for cell in itertools.product(range(V), repeat=3):
        e = law.get(cell, 0.0) * n
        o = counts.get(cell, 0)
        if e < 5:
            pool_o, pool_e = pool_o + o, pool_e + e
        else:
            obs.append(o)
            exp.append(e)
    obs.append(pool_o)
    exp.append(pool_e)
    total = sum(exp)
    exp = [x * n / total for x in exp]  # exact law sums to 1 up to rounding
    return chisquare(obs, exp).pvalue


@pytest.mark.parametrize("mode,B,T,top_k,top_p", [
    ("ar", 1, 1.0, 0, 1.0),
    ("spec-linear", 4, 1.0, 0, 1.0),
    ("spec-linear", 3, 0.8, 0, 0.9),
    ("spec-quadratic", 3, 1.2, 5, 1.0),
    ("auto", 4, 1.0, 0, 1.0),  # switches strategy between steps, by measured speed
])
def test_first_tokens_follow_ar_law(model, mode, B, T, top_k, top_p):
    prompt = [1, 2, 3]
    law = exact_law(model, prompt, T, top_k, top_p)
    counts, multi = {}, 0
    for s in range(N):
        out, stats, _ = run(model, prompt, mode, max_new_tokens=3, block_size=B, temperature=T,
                            top_k=top_k, top_p=top_p, seed=s)
        assert len(out) == 3
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
        multi += any(k > 1 for k in stats.acceptance_lengths)
    assert gof(counts, law, N) > 1e-3
    if mode.startswith("spec"):
        assert multi > N // 10  # drafts were accepted often: the min(1, p/q) path is exercised


def test_switching_quadratic_block_sizes_keeps_ar_law(model):
    """A switch between quadratic block sizes keeps the draft and the distributions it was drawn
    from, cut to the new size (or shorter than it): still AR's law."""
    prompt, T = [1, 2, 3], 1.0
    law = exact_law(model, prompt, T, 0, 1.0)
    counts, verified = {}, 0
    keys = [("spec-quadratic", 4), ("spec-quadratic", 2), ("spec-quadratic", 4)]
    for s in range(N):
        out, _, _, policy = run_cycle(model, prompt, keys, max_new_tokens=3, block_size=4, temperature=T,
                                      seed=s)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
        verified += sum(d for _, d in policy.drafted)
    assert gof(counts, law, N) > 1e-3
    assert verified > N  # the kept drafts were verified (no one-token restarts)


def test_harness_detects_a_wrong_law(model):
    """The same test rejects samples from a different distribution (T=1 samples vs the T=0.6 law)."""
    prompt = [1, 2, 3]
    law = exact_law(model, prompt, 0.6, 0, 1.0)
    counts = {}
    for s in range(N):
        out, _, _ = run(model, prompt, "ar", max_new_tokens=3, temperature=1.0, seed=s)
        counts[tuple(out)] = counts.get(tuple(out), 0) + 1
    assert gof(counts, law, N) < 1e-3
