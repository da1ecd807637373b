"""Tree verification on the CPU: `kernels.tree_verify`'s op with the walk down the tree on the host.

The reference keeps everything in [N, N] and [N, V] tensor ops so that a GPU step never waits for the
host; on a CPU reading a tensor costs nothing, and the reference's thirty-odd small ops cost several
times what a Python walk over N <= 256 nodes does (0.3-0.6 ms against ~0.1 ms a step, measured on
the embedded model's shapes). The per-node decisions (argmax rows; the sampled rule's coins) and the
bonus draw use the reference's own tensor ops, so the result is the reference's bit for bit.
"""
from __future__ import annotations

import torch

from .. import tree_verify as ref


def tree_verify(tokens, parents, depth, ancestors, target, uniforms=None, noise=None, depth_limit=0,
                k_cache=None, v_cache=None, cache_len=None, stride=1):
    ref._check(tokens, parents, depth, ancestors, target, uniforms, noise, depth_limit, k_cache, v_cache, cache_len,
               stride)
    N, dev = tokens.shape[0], tokens.device
    par, tok = parents.tolist(), tokens.tolist()
    kids: list[list[int]] = [[] for _ in range(N)]
    for i in range(1, N):
        kids[par[i]].append(i)
    if uniforms is None:
        a = torch.argmax(target, dim=-1).tolist()
        u, path = 0, [0]
        while True:
            nxt = next((c for c in kids[u] if tok[c] == a[u]), None)
            if nxt is None:
                break
            u = nxt
            path.append(u)
        bonus = a[u]
    else:
        p = target.float()
        pc = parents.clamp_min(0)
        pv_t = p[pc, tokens]
        # the reference's coins, op for op: the mass of the siblings tried before each candidate
        idx = torch.arange(N, device=dev)
        real = idx > 0
        siblings = (pc[:, None] == pc[None, :]) & (idx[None, :] < idx[:, None]) & real[:, None] & real[None, :]
        before = (siblings * pv_t[None, :]).sum(1)
        ok = ((uniforms * (1 - before) < pv_t) & (pv_t > 0)).tolist()
        u, path = 0, [0]
        while True:
            nxt = next((c for c in kids[u] if ok[c]), None)
            if nxt is None:
                break
            u = nxt
            path.append(u)
        p_c = p[u]
        r = p_c.clone()
        if kids[u]:
            r[torch.tensor([tok[c] for c in kids[u]], device=dev)] = 0.0
        r = torch.where(r.sum() > 0, r, p_c)
        bonus = int(torch.argmax(r / noise))
    c = len(path)
    out = [tok[i] for i in path[1:]] + [bonus]
    L1 = depth_limit + 1
    lng = dict(dtype=torch.long, device=dev)
    count = torch.tensor(c, **lng)
    if k_cache is not None:
        n = int(cache_len)
        src = [n + i * stride for i in path]
        if src != list(range(n, n + c)):
            keep = torch.tensor(src, **lng)
            k_cache[:, :, n:n + c] = k_cache[:, :, keep]
            v_cache[:, :, n:n + c] = v_cache[:, :, keep]
        cache_len += c
    return (torch.tensor(out + [-1] * (L1 - c), **lng), count, torch.tensor(path + [-1] * (L1 - c), **lng),
            torch.tensor(u, **lng))
