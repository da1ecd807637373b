"""Verify-and-commit for self-speculation: accepted length, emitted tokens, bonus and cache update.

One causal (linear) or quadratic verify pass has scored a chain d_0, d_1 .. d_L where d_0 is an
already verified token and d_1 .. d_L are drafts. Row i of the verifier's output is the AR
distribution of the token after d_0 .. d_i. This op decides how many drafts survive, which tokens
are emitted, and commits the K/V of the accepted chain -- all on device, shape-static, no host sync.

Inputs
  draft        [L] int64, the drafts d_1 .. d_L (L >= 0).
  target       [L+1, V]. Greedy rule (draft_probs is None): the verifier's logits, any float dtype.
               Sampled rule: p, fp32 probabilities per row (temperature / top-k / top-p already
               applied with `trikern.sampling.probs`).
  draft_probs  [L, V] fp32 or None. q: row j is the distribution draft[j] was drawn from. None
               selects the greedy rule.
  uniforms     [L] fp32 in [0, 1) (sampled rule only): one acceptance coin per draft.
  noise        [V] fp32 Exp(1) samples (sampled rule only): the one residual / bonus draw,
               argmax(r / noise) ~ normalize(r) (the exponential race, as in sampling.draw).
  k_cache, v_cache  [layers, Hkv, slots, D] or None (no cache update); cache_len 0-dim int64 n.
  stride       int >= 1: the verify pass wrote its chunk from slot n on, and the K/V of chain token
               d_j sits at slot n + j*stride (linear: 1; quadratic: the sub-block size B+1).

Rule
  Greedy:  a_i = argmax target[i]; c = length of the longest prefix with a_j == draft[j];
           emitted = a_0 .. a_c (= d_1 .. d_c, then the bonus a_c).
  Sampled (standard speculative sampling, lossless for any q): draft[j] is accepted iff
           uniforms[j] * q[j, draft[j]] < p[j, draft[j]]  (probability min(1, p/q));
           c = index of the first rejection (L if none); emitted = draft[:c] then one token drawn
           from r = max(p[c] - q[c], 0) on a rejection, or from r = p[L] when all were accepted
           (if r has no mass, which only rounding can cause, p[c] is used).

Outputs
  tokens [L+1] int64: tokens[:count] are the emitted tokens, tokens[count-1] is the bonus (the next
         seed); tokens[count:] = -1.
  count  0-dim int64 = c + 1, in [1, L+1] (the "acceptance length" the decode stats record).
  Cache (in place, when k_cache is given): for j = 0 .. L, slot n + j*stride is copied to slot
  n + j (all L+1, whatever count is; a no-op for stride 1), then cache_len += count. So the cache
  keeps d_0 .. d_c, whose K/V are exactly what AR would have written.
"""
from __future__ import annotations

import torch

from .dispatch import use_triton


def _check(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride):
    if draft.dim() != 1 or draft.dtype != torch.long:
        raise ValueError(f"verify: draft must be [L] int64; got {tuple(draft.shape)} {draft.dtype}")
    L = draft.shape[0]
    if target.dim() != 2 or target.shape[0] != L + 1:
        raise ValueError(f"verify: target must be [L+1={L + 1}, V]; got {tuple(target.shape)}")
    V = target.shape[1]
    if draft_probs is not None:
        if draft_probs.shape != (L, V):
            raise ValueError(f"verify: draft_probs must be [L={L}, V={V}]; got {tuple(draft_probs.shape)}")
        if uniforms is None or uniforms.shape != (L,):
            raise ValueError(f"verify: sampled rule needs uniforms [L={L}]; got "
                             f"{None if uniforms is None else tuple(uniforms.shape)}")
        if noise is None or noise.shape != (V,):
            raise ValueError(f"verify: sampled rule needs noise [V={V}]; got "
                             f"{None if noise is None else tuple(noise.shape)}")
    if k_cache is not None:
        if v_cache is None or k_cache.shape != v_cache.shape or k_cache.dim() != 4:
            raise ValueError("verify: k_cache and v_cache must both be [layers, Hkv, slots, D]")
        if cache_len is None or not torch.is_tensor(cache_len) or cache_len.dim() != 0:
            raise ValueError("verify: cache update needs cache_len as a 0-dim int64 tensor")
    if stride < 1:
        raise ValueError(f"verify: stride={stride} must be >= 1")


def accept_ref(draft, target, draft_probs=None, uniforms=None, noise=None):
    """The acceptance rule alone: (tokens [L+1] int64 padded with -1, count 0-dim int64)."""
    L = draft.shape[0]
    idx = torch.arange(L + 1, device=draft.device)
    if draft_probs is None:
        a = torch.argmax(target, dim=-1)
        ok = a[:L] == draft
        c = torch.cumprod(ok.long(), 0).sum()
        tokens = a
    else:
        p, q = target.float(), draft_probs.float()
        pd = p[:L].gather(1, draft[:, None])[:, 0]
        qd = q.gather(1, draft[:, None])[:, 0]
        ok = uniforms * qd < pd
        c = torch.cumprod(ok.long(), 0).sum()
        # residual of row c: p[c] - q[c] on a rejection, p[L] (q row of zeros) when all accepted
        q_pad = torch.cat([q, q.new_zeros(1, q.shape[1])], 0)
        p_c = p.index_select(0, c.reshape(1))[0]
        r = (p_c - q_pad.index_select(0, c.reshape(1))[0]).clamp_min(0)
        r = torch.where(r.sum() > 0, r, p_c)
        extra = torch.argmax(r / noise)
        tokens = torch.cat([draft, draft.new_zeros(1)])
        tokens = torch.where(idx == c, extra, tokens)
    tokens = torch.where(idx <= c, tokens, torch.full_like(tokens, -1))
    return tokens, c + 1


def commit_ref(k_cache, v_cache, cache_len, count, chain, stride):
    """Move the chain's K/V (slots n + j*stride, j < chain) to n + j, then cache_len += count."""
    if stride > 1:
        j = torch.arange(chain, device=k_cache.device)
        src, dst = cache_len + j * stride, cache_len + j
        k_cache[:, :, dst] = k_cache[:, :, src]
        v_cache[:, :, dst] = v_cache[:, :, src]
    cache_len += count


def verify_ref(draft, target, draft_probs=None, uniforms=None, noise=None,
               k_cache=None, v_cache=None, cache_len=None, stride=1):
    _check(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride)
    tokens, count = accept_ref(draft, target, draft_probs, uniforms, noise)
    if k_cache is not None:
        commit_ref(k_cache, v_cache, cache_len, count, draft.shape[0] + 1, stride)
    return tokens, count


def verify(draft, target, draft_probs=None, uniforms=None, noise=None,
           k_cache=None, v_cache=None, cache_len=None, stride=1, backend="auto"):
    if use_triton(backend, target):
        return verify_triton(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride)
    return verify_ref(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride)


def verify_triton(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride):
    raise NotImplementedError("verify: Triton kernel not written yet")
