"""The quadratic step's attention (SPEC §4.4): the mask, and what the one pass computes."""
import pytest
import torch
from decode_helpers import run  # noqa: F401  (sets the thread count)
from util import random_model

from trikern import kernels as K
from trikern.cache import KVCache
from trikern.kernels.attention import chunk_mask


def spec_mask(B):
    """Dense [B(B+1), B(B+1)] mask written from SPEC §4.4's sentences, token by token."""
    S = B + 1
    toks = [(i, a) for i in range(B) for a in range(S)]  # (sub-block, offset); offset 0 = d_i
    m = torch.zeros(len(toks), len(toks), dtype=torch.bool)
    for qi, (i, a) in enumerate(toks):
        for ki, (j, b) in enumerate(toks):
            if a == 0:  # "d_i sees the cache and d_0 ... d_i (a causal chain)"
                m[qi, ki] = b == 0 and j <= i
            else:  # "a mask of sub-block i sees the cache, d_0 ... d_i and every token of its own sub-block"
                m[qi, ki] = (b == 0 and j <= i) or j == i
    return m


@pytest.mark.parametrize("B", [1, 2, 3, 4, 8, 16])
def test_quadratic_mask_matches_spec(B):
    assert torch.equal(chunk_mask(K.QUADRATIC, B * (B + 1), B + 1), spec_mask(B))


def test_quadratic_pass_is_a_verifier_and_a_drafter():
    """Anchor logits equal a causal pass over d_0 .. d_{B-1}; sub-block i's mask logits equal the
    one-sub-block pass [d_i, M x B] after d_0 .. d_{i-1} were committed causally."""
    m = random_model(seed=11)
    cfg, B, mask = m.cfg, 4, m.cfg.mask_token_id
    S = B + 1
    prompt = torch.tensor([7, 8, 9, 10, 11])
    draft = torch.tensor([21, 22, 23, 24])
    n = prompt.shape[0]

    def fresh():
        c = KVCache.for_model(cfg, 64, torch.float32, "cpu", scratch=B * S)
        m(prompt, torch.arange(n), c, K.CAUSAL, write_cache=True)
        c.commit(n)
        return c

    cache = fresh()
    toks, pos = K.draft_tree(draft, cache.length, S, mask, backend="torch")
    quad = m(toks, pos, cache, K.QUADRATIC, write_cache=True, sub_block=S).view(B, S, -1)

    causal = m(draft, torch.arange(n, n + B), fresh(), K.CAUSAL)
    torch.testing.assert_close(quad[:, 0], causal, rtol=1e-5, atol=1e-5)

    for i in range(B):
        c = fresh()
        if i:
            m(draft[:i], torch.arange(n, n + i), c, K.CAUSAL, write_cache=True)
            c.commit(i)
        t1, p1 = K.draft_tree(draft[i:i + 1], c.length, S, mask, backend="torch")
        one = m(t1, p1, c, K.QUADRATIC, sub_block=S)
        torch.testing.assert_close(quad[i], one, rtol=1e-5, atol=1e-5)
