"""Block diffusion over the KV cache equals a naive implementation that recomputes everything.

The naive version keeps no cache: every denoise pass runs the whole sequence [prefix | block] with
a dense mask (prefix causal, block sees the prefix and the whole block), every seed comes from a
full causal pass over the prefix. It follows SPEC §4.2 sentence by sentence.
"""
import pytest
import torch
import torch.nn.functional as F
from decode_helpers import run
from util import random_model


def full_pass(m, ids, block_len):
    """Logits of [prefix | block] (block = the last block_len ids) under the diffusion mask."""
    N = len(ids)
    i = torch.arange(N)
    mask = i[:, None] >= i[None, :]
    mask[N - block_len:, N - block_len:] = True

    def attend(_, q, k, v):
        o = F.scaled_dot_product_attention(q.transpose(0, 1)[None], k.transpose(0, 1)[None],
                                           v.transpose(0, 1)[None], attn_mask=mask, scale=m.scale,
                                           enable_gqa=True)
        return o[0].transpose(0, 1)

    return m.logits(m.forward_hidden(torch.tensor(ids), i, attend))


@torch.no_grad()
def naive_diffusion(m, prompt, B, threshold, n_new):
    M = m.cfg.mask_token_id

    def ar_next(ids):
        logits = full_pass(m, ids, 1)[-1]
        logits[M] = float("-inf")
        return int(logits.argmax())

    out = [ar_next(prompt)]
    while len(out) < n_new:
        block = [out[-1]] + [M] * (B - 1)
        masked = [False] + [True] * (B - 1)
        while any(masked):
            logits = full_pass(m, prompt + out[:-1] + block, B)[-B:]
            logits[:, M] = float("-inf")
            probs = torch.softmax(logits, -1)
            conf = {i: (float(probs[i].max()), int(probs[i].argmax())) for i in range(B) if masked[i]}
            best = max(conf, key=lambda i: (conf[i][0], -i))
            for i, (c, tok) in conf.items():
                if c >= threshold or i == best:
                    block[i], masked[i] = tok, False
        out += block[1:]
        out.append(ar_next(prompt + out))
    return out[:n_new]


@pytest.mark.parametrize("B,threshold", [(2, 0.9), (4, 0.0), (4, 0.5), (8, 0.9), (8, 1.0)])
def test_diffusion_equals_naive(B, threshold):
    m = random_model(seed=B)
    prompt = [11, 22, 33, 44, 55]
    out, _, _ = run(m, prompt, "diffusion", max_new_tokens=3 * B + 2, block_size=B, threshold=threshold)
    assert out == naive_diffusion(m, prompt, B, threshold, 3 * B + 2)


def test_denoise_passes_never_write_the_cache():
    """The cache after a diffusion run holds exactly the causal K/V of prompt + committed tokens."""
    from trikern import kernels as K
    from trikern.cache import KVCache
    from trikern.decode import decode
    from trikern.decode import GenerationConfig, new_context

    m = random_model(seed=9)
    prompt = torch.tensor([1, 2, 3])
    ctx = new_context(m, GenerationConfig(max_new_tokens=13, block_size=4), 3, "diffusion")
    out = [t for c in decode(ctx, prompt, "diffusion") for t in c]
    n = int(ctx.cache.length)
    assert n == 3 + 13 - 1  # everything but the newest seed
    ref = KVCache.for_model(m.cfg, 32, torch.float32, "cpu")
    ids = torch.cat([prompt, torch.tensor(out[:-1])])
    m(ids, torch.arange(n), ref, K.CAUSAL, write_cache=True)
    torch.testing.assert_close(ctx.cache.k[:, :, :n], ref.k[:, :, :n], rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(ctx.cache.v[:, :, :n], ref.v[:, :, :n], rtol=1e-5, atol=1e-5)
