"""Attention on the CPU: the op of `kernels.attention.attention_ref`, over the committed entries only.

Reading the committed length costs nothing on a CPU (no device to sync with), so the chunk attends
to the first n cache slots only, not to every slot under a mask: a cache sized for wide quadratic
steps would make each pass pay for all its scratch. A one-token or bidirectional chunk then needs
no mask at all. With `chunk_in_cache` the chunk's K/V were also written to slots [n, n + T) before
the call (a pass that writes the cache), and are read there instead of concatenated.

The product is softmax(q keys^T * scale) vals in fp32, a GQA group as one batched matmul, over
query chunks whose scores fit `CPU_SCORES`: torch's CPU SDPA on bf16 with GQA is 2-30x slower at
every decoding shape measured here (1-72 queries, 100-4000 keys), the most at long caches.
"""
from __future__ import annotations

import math

import torch

from ..attention import BIDIRECTIONAL, CAUSAL, KNOWN_PATTERNS, TREE, _bad_pattern, _check, check_tree, full_mask

# Query rows per chunk: the fp32 scores stay within this many elements (16 MiB).
CPU_SCORES = 1 << 22


def attention(q, k, v, k_cache, v_cache, cache_len, pattern=CAUSAL, sub_block=0, scale=None, chunk_in_cache=False):
    _check(q, k, v, k_cache, v_cache)
    T, Hq, D = q.shape
    if T == 0:
        return q.new_empty(0, Hq, D)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    n = int(cache_len)
    if pattern not in KNOWN_PATTERNS:
        raise _bad_pattern(pattern)
    every = pattern == BIDIRECTIONAL or T == 1 and (pattern == CAUSAL or sub_block == 1)
    if pattern == TREE:
        mask = _tree_mask(sub_block, T, n, q.device)
    else:
        mask = None if every else full_mask(pattern, T, n, n, sub_block, q.device)
    if chunk_in_cache:
        return _softmax_fp32(q, k_cache[:, :n + T], v_cache[:, :n + T], mask, scale)
    keys = torch.cat([k_cache[:, :n], k.transpose(0, 1)], dim=1)  # [Hkv, n+T, D]
    vals = torch.cat([v_cache[:, :n], v.transpose(0, 1)], dim=1)
    return _softmax_fp32(q, keys, vals, mask, scale)


# The last TREE mask: every layer of a forward asks for the same one (the ancestor rows of one tree),
# and building it is a tenth of a small model's step. Holding the ancestors tensor itself keeps the
# identity test sound (its id cannot be reused while it is held).
_last_tree: tuple | None = None


def _tree_mask(tree, T, n, device):
    global _last_tree
    check_tree(tree, T, device)
    hit = _last_tree
    if hit is not None and hit[0] is tree.ancestors and hit[1:4] == (tree.sub_block, T, n):
        return hit[4]
    mask = full_mask(TREE, T, n, n, tree, device)
    _last_tree = (tree.ancestors, tree.sub_block, T, n, mask)
    return mask


def _softmax_fp32(q, keys, vals, mask, scale):
    T, Hq, D = q.shape
    Hkv, L = keys.shape[:2]
    G = Hq // Hkv
    kt, vf = keys.float().transpose(1, 2), vals.float()
    if T == 1 and mask is None:  # a one-token step: [1, Hq, D] is already [Hkv, G, D]
        s = torch.bmm(q.reshape(Hkv, G, D).float().mul_(scale), kt)
        return torch.bmm(s.softmax(-1), vf).view(1, Hq, D).to(q.dtype)
    step = max(1, CPU_SCORES // (Hq * L))

    def chunk(t0, qc):
        t = qc.shape[0]
        # [t, Hq, D] -> [Hkv, G * t, D]: query head h = kv * G + g, rows ordered (g, t)
        s = torch.bmm(qc.transpose(0, 1).reshape(Hkv, G * t, D).to(torch.float32).mul_(scale), kt)
        if mask is not None:
            s.view(Hkv, G, t, L).masked_fill_(~mask[t0:t0 + t], float("-inf"))
        return torch.bmm(s.softmax(-1), vf).view(Hq, t, D).transpose(0, 1)

    if T <= step:  # one chunk (every decoding step): no output buffer
        return chunk(0, q).to(q.dtype)
    out = q.new_empty(T, Hq, D)
    for t0 in range(0, T, step):
        out[t0:t0 + step] = chunk(t0, q[t0:t0 + step])
    return out
