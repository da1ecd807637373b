"""Attention on the CPU: the op of `kernels.attention.attention_ref`, over the committed entries only.

Reading the committed length costs nothing on a CPU (no device to sync with), so the chunk attends
to the first n cache slots only, not to every slot under a mask: a cache sized for wide quadratic
steps would make each pass pay for all its scratch. A one-token or bidirectional chunk then needs
no mask at all, and any other only its [T, T] chunk part, kept per shape (`_blocked`). With
`chunk_in_cache` the chunk's K/V were also written to slots [n, n + T) before the call (a pass that
writes the cache), and are read there instead of concatenated.

The product is softmax(q keys^T * scale) vals in fp32, a GQA group as one batched matmul, over
query chunks whose scores fit `CPU_SCORES`: torch's CPU SDPA on bf16 with GQA is 2-30x slower at
every decoding shape measured here (1-72 queries, 100-4000 keys), the most at long caches.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from ..attention import (BIDIRECTIONAL, CAUSAL, KNOWN_PATTERNS, TREE, Varlen, _bad_pattern, _check, _check_varlen,
                         check_tree, chunk_mask, tree_bits)

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
    blocked = None if every else _blocked(pattern, T, sub_block, q.device)
    if chunk_in_cache:
        return _softmax_fp32(q, k_cache[:, :n + T], v_cache[:, :n + T], blocked, scale)
    keys = torch.cat([k_cache[:, :n], k.transpose(0, 1)], dim=1)  # [Hkv, n+T, D]
    vals = torch.cat([v_cache[:, :n], v.transpose(0, 1)], dim=1)
    return _softmax_fp32(q, keys, vals, blocked, scale)


# Every query sees every committed entry, so a pattern's mask is its chunk part alone: [T, T], the
# same for every layer of a forward and every step of one shape. Built per layer (with the cache
# part, then complemented) it took 7-20% of a multi-row forward of the embedded model (bf16, 1
# thread: 4.53 -> 3.61 ms for a causal T = 8 chunk, 9.13 -> 8.46 ms for a quadratic B = 8 step), so
# it is built once and kept, as its complement (what masked_fill_ takes): per (pattern, T, sub_block)
# here, per tree on its TreeMask (a tree is one forward's).
_BLOCKED: dict = {}
_BLOCKED_KEPT = 16  # distinct chunk shapes of a process: a few per (mode, block size)
# Masks of up to this many elements are kept (T <= 1024: decode steps up to quadratic B = 31), so the
# store stays under 16 MiB; a longer chunk's (a prompt's prefill) is built per call, as before, next
# to compute that dwarfs it.
_KEPT_ELEMENTS = 1 << 20


def _blocked(pattern, T, sub_block, device) -> torch.Tensor:
    """[T, T] bool: True where chunk query i must not see chunk key j."""
    if pattern == TREE:
        check_tree(sub_block, T, device)
        key = ("cpu-blocked", T, device)
        hit = sub_block.derived.get(key)
        if hit is None:
            hit = sub_block.derived[key] = _tree_blocked(sub_block, device)
        return hit
    if T * T > _KEPT_ELEMENTS:
        return ~chunk_mask(pattern, T, sub_block, device)
    key = (pattern, T, sub_block, device)
    hit = _BLOCKED.get(key)
    if hit is None:
        if len(_BLOCKED) >= _BLOCKED_KEPT:
            _BLOCKED.clear()
        with torch.inference_mode(False):  # kept across calls: an inference tensor would refuse autograd's
            hit = _BLOCKED[key] = ~chunk_mask(pattern, T, sub_block, device)
    return hit


def _tree_blocked(tree, device) -> torch.Tensor:
    """The TREE pattern's complement (`~chunk_mask(TREE, ...)`) in a handful of ops: a tree is one
    forward's, and chunk_mask's ~20 ops took ~0.1 ms of it, 3% of a linear tree step of the embedded
    model (py-spy). What depends only on (nodes, tokens per node) is kept in `_tree_layout`."""
    not_anc = ~tree_bits(tree.ancestors)
    blk, always = _tree_layout(tree.ancestors.shape[0], tree.sub_block, device)
    if blk is None:  # one token a node
        return not_anc
    # past `always`: a node key is seen by the tokens of its descendants' sub-blocks and its own
    return always | not_anc.index_select(0, blk).index_select(1, blk)


_TREE_LAYOUTS: dict = {}


def _tree_layout(N: int, S: int, device):
    """For N nodes of S tokens (S > 1): each token's node, and the [T, T] tokens blocked whatever the
    tree -- a mask key, unless the query is a mask token of the same sub-block; (None, None) when S = 1."""
    if S == 1:
        return None, None
    key = (N, S, device)
    hit = _TREE_LAYOUTS.get(key)
    if hit is not None:
        return hit
    with torch.inference_mode(False):
        i = torch.arange(N * S, device=device)
        blk, off = i // S, i % S
        own = (off[:, None] > 0) & (blk[:, None] == blk[None, :])  # a mask token's own sub-block
        hit = blk, (off[None, :] > 0) & ~own
    if (N * S) ** 2 <= _KEPT_ELEMENTS:
        if len(_TREE_LAYOUTS) >= _BLOCKED_KEPT:
            _TREE_LAYOUTS.clear()
        _TREE_LAYOUTS[key] = hit
    return hit


def _softmax_fp32(q, keys, vals, blocked, scale):
    T, Hq, D = q.shape
    Hkv, L = keys.shape[:2]
    G = Hq // Hkv
    kt, vf = keys.float().transpose(1, 2), vals.float()
    if T == 1 and blocked is None:  # a one-token step: [1, Hq, D] is already [Hkv, G, D]
        s = torch.bmm(q.reshape(Hkv, G, D).float().mul_(scale), kt)
        return torch.bmm(s.softmax(-1), vf).view(1, Hq, D).to(q.dtype)
    step = max(1, CPU_SCORES // (Hq * L))

    def chunk(t0, qc):
        t = qc.shape[0]
        # [t, Hq, D] -> [Hkv, G * t, D]: query head h = kv * G + g, rows ordered (g, t)
        s = torch.bmm(qc.transpose(0, 1).reshape(Hkv, G * t, D).to(torch.float32).mul_(scale), kt)
        if blocked is not None:  # the chunk's keys are the last T
            s.view(Hkv, G, t, L)[..., L - T:].masked_fill_(blocked[t0:t0 + t], float("-inf"))
        return torch.bmm(s.softmax(-1), vf).view(Hq, t, D).transpose(0, 1)

    if T <= step:  # one chunk (every decoding step): no output buffer
        return chunk(0, q).to(q.dtype)
    out = q.new_empty(T, Hq, D)
    for t0 in range(0, T, step):
        out[t0:t0 + step] = chunk(t0, q[t0:t0 + step])
    return out


# ------------------------------------------------------------------------------------------------
# Varlen (kernels.attention.Varlen): several sequences' chunks in one call. Segments are padded to
# [B, Tmax] queries over [B, L] keys gathered from each one's region, so a group of sequences is one
# fused fp32 SDPA over [B, Hkv, G * Tmax] rows however many it holds: a loop over segments would pay
# the per-op cost of a one-token step once per sequence per layer, which is most of what batching
# saves on a CPU. Padding rows are computed and dropped; padding keys are masked.
#
# The plan (built once per pass, `segs.derived`, shared by every layer): a segment much longer than
# the shortest (a joining prompt's prefill chunk among one-token steps) runs alone, as do groups that
# would outgrow `CPU_SCORES` -- padding every sequence to it would cost more than the loop; a lone
# segment is the single-sequence op on its region (the solo run's exact arithmetic, chunked by
# `CPU_SCORES`). With `chunk_in_cache` (a pass that writes the cache) each chunk's K/V already sit in
# its region after the committed entries, so the keys are one gather of slots [0, n + T) per
# region; otherwise the committed entries and the chunk are gathered apart and concatenated.
# ------------------------------------------------------------------------------------------------
PAD_LIMIT = 64  # a segment over this many tokens and twice the shortest one runs alone


def attention_varlen(q, k, v, k_cache, v_cache, segs: Varlen, pattern=CAUSAL, sub_block=0, scale=None,
                     chunk_in_cache=False):
    _check_varlen(q, k_cache, segs, pattern, sub_block)
    _check(q, k, v, k_cache, v_cache)
    N, Hq, D = q.shape
    if N == 0:
        return q.new_empty(0, Hq, D)
    groups = _plan(segs, Hq, chunk_in_cache)
    args = (q, k, v, k_cache, v_cache, segs, pattern, sub_block, scale, chunk_in_cache)
    if len(groups) == 1 and sum(segs.starts[b + 1] - segs.starts[b] for b in groups[0]) == N:
        return _group(groups[0], *args)  # every row, in order
    out = q.new_empty(N, Hq, D)
    for grp in groups:
        rows = segs.derived.get(("out", grp))
        if rows is None:
            rows = segs.derived[("out", grp)] = torch.cat([torch.arange(*segs.segment(b)[:2]) for b in grp]).to(q.device)
        out.index_copy_(0, rows, _group(grp, *args))
    return out


def _plan(segs: Varlen, Hq: int, chunk_in_cache: bool) -> list[tuple[int, ...]]:
    """The non-empty segments in groups run together (see above), in row order within a group."""
    key = ("plan", Hq, chunk_in_cache)
    hit = segs.derived.get(key)
    if hit is not None:
        return hit
    size = {b: segs.starts[b + 1] - segs.starts[b] for b in range(segs.count) if segs.starts[b + 1] > segs.starts[b]}
    shortest = min(size.values())
    groups, cur, cur_T, cur_L = [], [], 0, 0
    for b, T in size.items():
        if T > max(PAD_LIMIT, 2 * shortest):
            groups.append((b,))
            continue
        n = segs.lengths[b]
        T2, L2 = max(cur_T, T), max(cur_L, n + T if chunk_in_cache else n)
        if cur and (len(cur) + 1) * T2 * Hq * (L2 + (0 if chunk_in_cache else T2)) > CPU_SCORES:
            groups.append(tuple(cur))
            cur, T2, L2 = [], T, n + T if chunk_in_cache else n
        cur.append(b)
        cur_T, cur_L = T2, L2
    if cur:
        groups.append(tuple(cur))
    segs.derived[key] = groups
    return groups


def _group(grp, q, k, v, k_cache, v_cache, segs, pattern, sub_block, scale, chunk_in_cache):
    """The rows of the segments `grp` (in their order): one padded SDPA, or the single-sequence op."""
    if len(grp) == 1:
        a, e, base, n = segs.segment(grp[0])
        region = slice(base, base + segs.region)
        return attention(q[a:e], k[a:e], v[a:e], k_cache[:, region], v_cache[:, region], n, pattern, sub_block,
                         scale, chunk_in_cache)
    T_all, Hq, D = q.shape
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    qi, ci, mask, rows = _varlen_layout(segs, grp, pattern, sub_block, chunk_in_cache, q.device)
    B, Tmax = qi.shape
    Hkv = k_cache.shape[0]
    G = Hq // Hkv
    keys, vals = (_gather_keys(c, x, ci, qi, chunk_in_cache) for c, x in ((k_cache, k), (v_cache, v)))
    L = keys.shape[2]
    # queries [B, Tmax, Hq, D] -> [B, Hkv, G * Tmax, D], rows ordered (g, t) as in `_softmax_fp32`
    qp = q if rows is None and B * Tmax == T_all else q.index_select(0, qi.reshape(-1))  # all rows, in order
    qp = qp.view(B, Tmax, Hkv, G, D).permute(0, 2, 3, 1, 4).reshape(B, Hkv, G * Tmax, D)
    rows_mask = segs.derived.get(("rows", grp, pattern, sub_block, chunk_in_cache, G))
    if rows_mask is None:  # [B, 1, G * Tmax, L]: every query head of a kv group sees its token's keys
        rows_mask = mask[:, None, None].expand(B, 1, G, Tmax, L).reshape(B, 1, G * Tmax, L)
        segs.derived[("rows", grp, pattern, sub_block, chunk_in_cache, G)] = rows_mask
    # One fused op (scores, mask, softmax, product) in fp32: half the time of the three ops spelled out.
    o = F.scaled_dot_product_attention(qp.float(), keys, vals, attn_mask=rows_mask, scale=scale)
    o = o.view(B, Hkv, G, Tmax, D).permute(0, 3, 1, 2, 4).reshape(B * Tmax, Hq, D)  # rows (b, t)
    return (o if rows is None else o.index_select(0, rows)).to(q.dtype)


def _gather_keys(cache, chunk, ci, qi, chunk_in_cache):
    """[B, Hkv, L, D] fp32: the slots `ci` of each region, then (unless the chunk is in the cache)
    the segment's own chunk rows `qi`."""
    Hkv, D = cache.shape[0], cache.shape[2]
    B, n = ci.shape
    out = cache.index_select(1, ci.reshape(-1)).view(Hkv, B, n, D)
    if not chunk_in_cache:
        own = chunk.index_select(0, qi.reshape(-1)).view(B, qi.shape[1], Hkv, D).permute(2, 0, 1, 3)
        out = torch.cat([out, own], 2)
    return out.transpose(0, 1).float()


def _varlen_layout(segs: Varlen, grp, pattern, sub_block, chunk_in_cache, device):
    """For the segments `grp`: (query rows [B, Tmax], region slots [B, L0], mask [B, Tmax, L], the real
    rows of the padded output or None when there is no padding), built once per pass. Keys: L0 slots
    of each region (the committed entries, and with `chunk_in_cache` the chunk after them), then
    (without it) Tmax chunk rows."""
    key = ("layout", grp, pattern, sub_block, chunk_in_cache, device)
    hit = segs.derived.get(key)
    if hit is not None:
        return hit
    segments = [segs.segment(b) for b in grp]
    B = len(segments)
    Tmax = max(e - a for a, e, _, _ in segments)
    extra = 0 if chunk_in_cache else Tmax
    L0 = max(max(n + (e - a) * chunk_in_cache for a, e, _, n in segments), 1)  # >= 1: no empty gathers
    t, j = torch.arange(Tmax), torch.arange(L0)
    qi = torch.empty(B, Tmax, dtype=torch.long)
    ci = torch.empty(B, L0, dtype=torch.long)
    mask = torch.zeros(B, Tmax, L0 + extra, dtype=torch.bool)
    rows = []
    for b, (a, e, base, n) in enumerate(segments):
        T = e - a
        qi[b] = a + t.clamp(max=T - 1)  # padding rows repeat the last one (dropped at the end)
        ci[b] = base + j.clamp(max=max(n + T * chunk_in_cache - 1, 0))
        mask[b, :, :n] = True
        at = n if chunk_in_cache else L0
        mask[b, :T, at:at + T] = chunk_mask(pattern, T, sub_block)
        mask[b, T:, at] = True  # padding rows see one key: no all -inf row (no NaN to drop)
        rows.append(b * Tmax + torch.arange(T))
    padded = any(e - a != Tmax for a, e, _, _ in segments)
    out = (qi.to(device), ci.to(device), mask.to(device), torch.cat(rows).to(device) if padded else None)
    segs.derived[key] = out
    return out
