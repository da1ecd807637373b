"""Attention of a chunk of queries over the static KV cache plus the chunk itself.

q: [T, Hq, D]; k, v: [T, Hkv, D] (the chunk's own keys/values); k_cache, v_cache: [Hkv, S, D]
(one layer of the static cache, capacity S); cache_len: committed length n (int or 0-dim int64
tensor, so decode steps need no host sync). Query i sits at position n + i (QUADRATIC: see below).
Every query sees all committed cache entries; the MODE decides what it sees of the chunk:

- CAUSAL: chunk keys j <= i (prefill, AR step, diffusion commit, self-spec verify).
- BIDIRECTIONAL: the whole chunk (diffusion denoise, self-spec draft).
- QUADRATIC: the chunk is sub-blocks of `sub_block` = B+1 tokens, [d_i, M x B] (SPEC §4.4).
  Query (i, a) sees the anchors d_j (offset 0) of sub-blocks j <= i, and, if it is a mask
  (a >= 1), every token of its own sub-block. The mask is computed from indices, never stored.

GQA is handled by index arithmetic (no repeated K/V). The PyTorch reference below builds the dense
mask and is the spec the Triton kernel is tested against.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .dispatch import use_triton

CAUSAL, BIDIRECTIONAL, QUADRATIC = 0, 1, 2
MODES = {"causal": CAUSAL, "bidirectional": BIDIRECTIONAL, "quadratic": QUADRATIC}


def chunk_mask(mode: int, T: int, sub_block: int = 0, device=None) -> torch.Tensor:
    """[T, T] bool: which chunk keys each chunk query sees."""
    i = torch.arange(T, device=device)
    if mode == CAUSAL:
        return i[:, None] >= i[None, :]
    if mode == BIDIRECTIONAL:
        return torch.ones(T, T, dtype=torch.bool, device=device)
    if mode == QUADRATIC:
        if sub_block < 1 or T % sub_block:
            raise ValueError(f"quadratic attention: chunk length {T} is not a multiple of sub_block={sub_block}")
        blk, off = i // sub_block, i % sub_block
        anchor = (off[None, :] == 0) & (blk[None, :] <= blk[:, None])
        own = (off[:, None] > 0) & (blk[None, :] == blk[:, None])
        return anchor | own
    raise ValueError(f"attention mode={mode!r}: expected CAUSAL, BIDIRECTIONAL or QUADRATIC")


def full_mask(mode, T, S, cache_len, sub_block=0, device=None) -> torch.Tensor:
    """[T, S + T] bool over (cache slots, chunk)."""
    n = cache_len if torch.is_tensor(cache_len) else torch.tensor(cache_len, device=device)
    cache_vis = (torch.arange(S, device=device) < n)[None, :].expand(T, S)
    return torch.cat([cache_vis, chunk_mask(mode, T, sub_block, device)], dim=1)


def _check(q, k, v, k_cache, v_cache):
    if q.dim() != 3 or k.dim() != 3 or v.dim() != 3:
        raise ValueError(f"attention: q, k, v must be [T, H, D]; got {tuple(q.shape)}, {tuple(k.shape)}, {tuple(v.shape)}")
    T, Hq, D = q.shape
    if k.shape != v.shape or k.shape[0] != T or k.shape[2] != D:
        raise ValueError(f"attention: k {tuple(k.shape)} / v {tuple(v.shape)} do not match q {tuple(q.shape)}")
    Hkv = k.shape[1]
    if Hq % Hkv:
        raise ValueError(f"attention: {Hq} query heads are not a multiple of {Hkv} kv heads")
    if k_cache.dim() != 3 or k_cache.shape != v_cache.shape or k_cache.shape[0] != Hkv or k_cache.shape[2] != D:
        raise ValueError(f"attention: cache {tuple(k_cache.shape)} is not [Hkv={Hkv}, S, D={D}]")


def attention_ref(q, k, v, k_cache, v_cache, cache_len, mode=CAUSAL, sub_block=0, scale=None):
    _check(q, k, v, k_cache, v_cache)
    T, Hq, D = q.shape
    if T == 0:
        return q.new_empty(0, Hq, D)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    S = k_cache.shape[1]
    mask = full_mask(mode, T, S, cache_len, sub_block, q.device)
    keys = torch.cat([k_cache, k.transpose(0, 1)], dim=1)[None]  # [1, Hkv, S+T, D]
    vals = torch.cat([v_cache, v.transpose(0, 1)], dim=1)[None]
    out = F.scaled_dot_product_attention(
        q.transpose(0, 1)[None], keys, vals, attn_mask=mask, scale=scale, enable_gqa=True
    )
    return out[0].transpose(0, 1).contiguous()


def attention(q, k, v, k_cache, v_cache, cache_len, mode=CAUSAL, sub_block=0, scale=None, backend="auto"):
    if use_triton(backend, q):
        return attention_triton(q, k, v, k_cache, v_cache, cache_len, mode, sub_block, scale)
    return attention_ref(q, k, v, k_cache, v_cache, cache_len, mode, sub_block, scale)


def attention_triton(q, k, v, k_cache, v_cache, cache_len, mode, sub_block, scale):
    raise NotImplementedError("attention: Triton kernel not written yet")
