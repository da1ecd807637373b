"""Verify-and-commit for a draft tree: the deepest node whose root path AR accepts, the emitted tokens,
the bonus, and the cache keeping that path's K/V only -- on the device, shape-static, no host sync.

One verify pass (kernels.attention's TREE pattern) has scored every node of a draft tree
(kernels/tree.py): row i of `target` is AR's distribution of the token after node i's root path.

Inputs
  tokens, parents, depth  [N] int64 (kernels.tree.DraftTree); node 0 is the root (already emitted),
                          a parent precedes its children and siblings have distinct tokens, in the
                          order they are to be tried.
  ancestors   [N, W] int32 ancestor bit rows (DraftTree.ancestors).
  target      [N, V]. Greedy rule (uniforms is None): logits, any float dtype. Sampled rule: p, fp32
              probabilities per row (the request's temperature / top-k / top-p applied).
  uniforms    [N] fp32 in [0, 1): one coin per node (entry 0 unused). None: greedy.
  noise       [V] fp32 Exp(1): the one bonus draw, argmax(r / noise) ~ normalize(r).
  depth_limit L: the deepest a node can be; the outputs have L + 1 entries.
  k_cache, v_cache [layers, Hkv, slots, D] or None; cache_len 0-dim int64 n; stride S: the verify
              pass wrote node i's K/V at slot n + i * S (S = 1 for a tree alone, B + 1 when every node
              carries a sub-block of masks).

Rule
  Greedy: a_i = argmax target[i]. At node u the child whose token is a_u is taken (the first such,
  in index order). Sampled (recursive rejection sampling over siblings, each candidate a point mass,
  since the tree's children are deterministic top-k tokens): at node u with distribution p = p_u the
  children x_1, x_2, ... are tried in order; x_k is accepted with probability
  p(x_k) / (1 - p(x_1) - ... - p(x_{k-1})) (coin: u * (1 - sum) < p(x_k), never when p(x_k) = 0). A
  rejected candidate leaves p with its mass removed, renormalised, so each step's outcome has law p_u
  exactly whatever the tree: taking x_k has probability p(x_k), and when every child is rejected the
  bonus is drawn from r = p_u with the children's tokens zeroed (p_u itself if rounding left r
  without mass). The walk from the root stops at the deepest taken node c.
  Emitted: the tokens of c's root path below the root, then the bonus (greedy: a_c).

Outputs
  out    [L+1] int64: the emitted tokens, then -1.
  count  0-dim int64 = depth(c) + 1.
  path   [L+1] int64: the node at each depth of c's root path (path[0] = 0), then -1.
  last   0-dim int64: c.
  Cache (in place, when k_cache is given): slot n + path[j] * S is copied to n + j for j <= depth(c)
  (the gather reads every source before any write), then cache_len += count: the cache keeps the
  root and the accepted nodes, whose K/V are exactly AR's (each node saw its ancestors only).

Every backend runs these torch ops (a handful of [N, N] and [N, V] ops a step, no host sync, CUDA
graph safe). With K = 1 and N = L + 1 nodes (the chain) the greedy rule is kernels.verify's.
"""
from __future__ import annotations

import torch

from .attention import tree_bits


def _check(tokens, parents, depth, ancestors, target, uniforms, noise, depth_limit, k_cache, v_cache, cache_len,
           stride):
    N = tokens.shape[0]
    for name, t in (("tokens", tokens), ("parents", parents), ("depth", depth)):
        if t.dim() != 1 or t.shape[0] != N or t.dtype != torch.long:
            raise ValueError(f"tree_verify: {name} must be [N={N}] int64; got {tuple(t.shape)} {t.dtype}")
    if N < 1:
        raise ValueError("tree_verify: the tree has no node (N = 0)")
    if ancestors.dim() != 2 or ancestors.shape != (N, (N + 31) // 32) or ancestors.dtype != torch.int32:
        raise ValueError(f"tree_verify: ancestors must be [N={N}, {(N + 31) // 32}] int32; got "
                         f"{tuple(ancestors.shape)} {ancestors.dtype}")
    if target.dim() != 2 or target.shape[0] != N or target.shape[1] == 0:
        raise ValueError(f"tree_verify: target must be [N={N}, V] with V > 0; got {tuple(target.shape)}")
    V = target.shape[1]
    if uniforms is not None:
        if uniforms.shape != (N,):
            raise ValueError(f"tree_verify: uniforms must be [N={N}]; got {tuple(uniforms.shape)}")
        if noise is None or noise.shape != (V,):
            raise ValueError(f"tree_verify: the sampled rule needs noise [V={V}]; got "
                             f"{None if noise is None else tuple(noise.shape)}")
    if not isinstance(depth_limit, int) or depth_limit < 0:
        raise ValueError(f"tree_verify: depth_limit={depth_limit!r} must be an int >= 0")
    if k_cache is not None:
        if v_cache is None or k_cache.shape != v_cache.shape or k_cache.dim() != 4:
            raise ValueError("tree_verify: k_cache and v_cache must both be [layers, Hkv, slots, D]")
        if cache_len is None or not torch.is_tensor(cache_len) or cache_len.dim() != 0:
            raise ValueError("tree_verify: the cache update needs cache_len as a 0-dim int64 tensor")
    if not isinstance(stride, int) or stride < 1:
        raise ValueError(f"tree_verify: stride={stride!r} must be an int >= 1")
    dev = target.device
    for name, t in (("tokens", tokens), ("parents", parents), ("depth", depth), ("ancestors", ancestors),
                    ("uniforms", uniforms), ("noise", noise), ("k_cache", k_cache), ("cache_len", cache_len)):
        if t is not None and t.device != dev:
            raise ValueError(f"tree_verify: {name} is on {t.device}, target on {dev}")


def accept(tokens, parents, depth, ancestors, target, uniforms=None, noise=None, depth_limit=0):
    """The acceptance rule alone: (out [L+1], count, path [L+1], last)."""
    N, dev = tokens.shape[0], tokens.device
    par = parents.clamp_min(0)
    idx = torch.arange(N, device=dev)
    real = idx > 0
    # siblings[i, j]: j is a sibling of i tried before it
    siblings = (par[:, None] == par[None, :]) & (idx[None, :] < idx[:, None]) & real[:, None] & real[None, :]
    if uniforms is None:
        a = torch.argmax(target, dim=-1)
        ok = tokens == a.index_select(0, par)
    else:
        p = target.float()
        pv = p[par, tokens]  # p_parent(token): the candidate's probability under its parent's row
        before = (siblings * pv[None, :]).sum(1)  # the mass of the siblings rejected before it
        ok = (uniforms * (1 - before) < pv) & (pv > 0)
    taken = ok & ~(siblings & ok[None, :]).any(1) & real
    taken = taken | ~real
    reach = ~(tree_bits(ancestors) & ~taken[None, :]).any(1)
    last = torch.argmax(torch.where(reach, depth, -1))
    count = depth.index_select(0, last.reshape(1))[0] + 1
    j = torch.arange(depth_limit + 1, device=dev)
    on = reach[None, :] & (depth[None, :] == j[:, None])  # [L+1, N]: the path's node at depth j
    path = torch.where(on.any(1), torch.argmax(on.int(), dim=1), -1)
    if uniforms is None:
        bonus = a.index_select(0, last.reshape(1))[0]
    else:
        p_c = p.index_select(0, last.reshape(1))[0]
        children = (parents == last) & real
        r = p_c.scatter_reduce(0, tokens, torch.where(children, 0.0, float("inf")), reduce="amin")
        r = torch.where(r.sum() > 0, r, p_c)
        bonus = torch.argmax(r / noise)
    nxt = tokens.index_select(0, path[1:].clamp_min(0))  # the token at depth j + 1
    out = torch.cat([nxt, nxt.new_zeros(1)])
    out = torch.where(j == count - 1, bonus, out)
    out = torch.where(j < count, out, -1)
    return out, count, path, last


def commit(k_cache, v_cache, cache_len, count, path, stride):
    """Slot n + path[j] * stride -> n + j for j < count, then cache_len += count."""
    j = torch.arange(path.shape[0], device=path.device)
    keep = j < count
    # Past the count the copy is slot n + j onto itself (harmless, and the shape stays static).
    src = cache_len + torch.where(keep, path.clamp_min(0) * stride, j)
    dst = cache_len + j
    k_cache[:, :, dst] = k_cache[:, :, src]
    v_cache[:, :, dst] = v_cache[:, :, src]
    cache_len += count


def tree_verify(tokens, parents, depth, ancestors, target, uniforms=None, noise=None, depth_limit=0,
                k_cache=None, v_cache=None, cache_len=None, stride=1):
    """-> (out [L+1], count, path [L+1], last); commits the accepted path when k_cache is given."""
    _check(tokens, parents, depth, ancestors, target, uniforms, noise, depth_limit, k_cache, v_cache, cache_len,
           stride)
    out, count, path, last = accept(tokens, parents, depth, ancestors, target, uniforms, noise, depth_limit)
    if k_cache is not None:
        commit(k_cache, v_cache, cache_len, count, path, stride)
    return out, count, path, last
