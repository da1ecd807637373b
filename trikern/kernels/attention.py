"""Attention of a chunk of queries over the static KV cache plus the chunk itself.

q: [T, Hq, D]; k, v: [T, Hkv, D] (the chunk's own keys/values); k_cache, v_cache: [Hkv, S, D]
(one layer of the static cache, capacity S); cache_len: committed length n (int or 0-dim int64
tensor, so decode steps need no host sync). Query i sits at position n + i (QUADRATIC: see below).
Every query sees all committed cache entries; the attention `pattern` decides what it sees of the
chunk:

- CAUSAL: chunk keys j <= i (prefill, AR step, diffusion commit, self-spec verify).
- BIDIRECTIONAL: the whole chunk (diffusion denoise, self-spec draft).
- QUADRATIC: the chunk is sub-blocks of `sub_block` = B+1 tokens, [d_i, M x B] (SPEC §4.4).
  Query (i, a) sees the anchors d_j (offset 0) of sub-blocks j <= i, and, if it is a mask
  (a >= 1), every token of its own sub-block. The mask is computed from indices, never stored.
- TREE: the chunk is the N nodes of a draft tree (kernels/tree.py), each a sub-block of S tokens
  [node, M x (S-1)] (S = 1: the nodes alone). `sub_block` is then a `TreeMask(ancestors, S)`, with
  ancestors [N, W] int32 bit rows (bit j of row i: node j is node i or one of its ancestors). Query
  (i, a) sees the anchors of node i's ancestors and of node i itself, and, if it is a mask (a >= 1),
  every token of its own sub-block. A chain (parent i-1) is CAUSAL at S = 1 and QUADRATIC at S > 1.

GQA is handled by index arithmetic (no repeated K/V). The PyTorch reference below builds the dense
mask and is the spec the Triton kernel (and the CPU backend's attention, kernels/cpu/) is tested
against.

The Triton kernel (`attention_triton`) is flash attention with an fp32 online softmax: one program
per (tile of packed query rows, kv head, cache split); the mask is computed from indices under a
`tl.constexpr` PATTERN; decode-shaped launches split the cache over several programs and merge the
partial softmaxes in a second small kernel. In VARLEN mode (`attention_varlen_triton`) the same
kernel runs a whole batch's segments in one launch, each program reading its segment's rows, region
and committed length on the device. Launch configs come from a per-arch config space
through `trikern.kernels.autotune`; `aot_variants` and `tune_shapes` feed `trikern check-kernels`
and `trikern tune`.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from .dispatch import FP_FUSION, interpreting

CAUSAL, BIDIRECTIONAL, QUADRATIC, TREE = 0, 1, 2, 3
# Attention patterns by name (benchmarks, reports); "mode" is the decoding mode elsewhere in trikern.
PATTERNS = {"causal": CAUSAL, "bidirectional": BIDIRECTIONAL, "quadratic": QUADRATIC}
# TREE takes a TreeMask instead of an int sub_block, so it is not in the by-name table.
KNOWN_PATTERNS = (CAUSAL, BIDIRECTIONAL, QUADRATIC, TREE)


class TreeMask:
    """The TREE pattern's layout (passed as `sub_block`): per node its ancestor bit row, and the
    tokens per node (1: the node alone; B+1: the node and its B masks).

    Backends keep per-pass derived tensors (the CPU backend's mask) in `derived`, as `Varlen` does:
    every layer of a forward asks for the same one, and a TreeMask lives for one forward."""

    __slots__ = ("ancestors", "sub_block", "derived")

    def __init__(self, ancestors: torch.Tensor, sub_block: int = 1):
        self.ancestors = ancestors  # [N, W] int32, W = ceil(N / 32)
        self.sub_block = sub_block
        self.derived: dict = {}


def tree_bits(ancestors: torch.Tensor) -> torch.Tensor:
    """[N, N] bool from [N, W] ancestor words: [i, j] iff node j is node i or an ancestor of it."""
    N = ancestors.shape[0]
    j = torch.arange(N, device=ancestors.device)
    words = ancestors.long() if ancestors.shape[1] == 1 else ancestors.long().index_select(1, j // 32)
    return ((words >> (j % 32)) & 1).bool()


def check_tree(tree, T: int, device=None) -> TreeMask:
    """The TREE pattern's `sub_block` argument, checked against a chunk of T tokens."""
    if not isinstance(tree, TreeMask):
        raise ValueError(f"tree attention: sub_block must be a TreeMask(ancestors, sub_block); got {type(tree).__name__}")
    anc, S = tree.ancestors, tree.sub_block
    if not isinstance(S, int) or S < 1:
        raise ValueError(f"tree attention: TreeMask.sub_block={S!r} must be an int >= 1")
    if anc.dim() != 2 or anc.dtype != torch.int32 or anc.shape[1] != (anc.shape[0] + 31) // 32:
        raise ValueError(f"tree attention: TreeMask.ancestors must be [N, ceil(N/32)] int32; got "
                         f"{tuple(anc.shape)} {anc.dtype}")
    if anc.shape[0] * S != T:
        raise ValueError(f"tree attention: chunk length {T} is not {anc.shape[0]} nodes x sub_block={S}")
    if device is not None and anc.device != device:
        raise ValueError(f"tree attention: TreeMask.ancestors is on {anc.device}, q on {device}")
    return tree


def chunk_mask(pattern: int, T: int, sub_block: int = 0, device=None) -> torch.Tensor:
    """[T, T] bool: which chunk keys each chunk query sees."""
    i = torch.arange(T, device=device)
    if pattern == CAUSAL:
        return i[:, None] >= i[None, :]
    if pattern == BIDIRECTIONAL:
        return torch.ones(T, T, dtype=torch.bool, device=device)
    if pattern == QUADRATIC:
        if sub_block < 1 or T % sub_block:
            raise ValueError(f"quadratic attention: chunk length {T} is not a multiple of sub_block={sub_block}")
        blk, off = i // sub_block, i % sub_block
        anchor = (off[None, :] == 0) & (blk[None, :] <= blk[:, None])
        own = (off[:, None] > 0) & (blk[None, :] == blk[:, None])
        return anchor | own
    if pattern == TREE:
        S = check_tree(sub_block, T).sub_block
        blk, off = i // S, i % S
        bits = tree_bits(sub_block.ancestors.to(device))
        anchor = (off[None, :] == 0) & bits[blk[:, None], blk[None, :]]
        own = (off[:, None] > 0) & (blk[None, :] == blk[:, None])
        return anchor | own
    raise _bad_pattern(pattern)


def _bad_pattern(pattern) -> ValueError:
    return ValueError(f"attention pattern={pattern!r}: expected CAUSAL, BIDIRECTIONAL, QUADRATIC or TREE")


def full_mask(pattern, T, S, cache_len, sub_block=0, device=None) -> torch.Tensor:
    """[T, S + T] bool over (cache slots, chunk)."""
    n = cache_len if torch.is_tensor(cache_len) else torch.tensor(cache_len, device=device)
    cache_vis = (torch.arange(S, device=device) < n)[None, :].expand(T, S)
    return torch.cat([cache_vis, chunk_mask(pattern, T, sub_block, device)], dim=1)


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


def attention_ref(q, k, v, k_cache, v_cache, cache_len, pattern=CAUSAL, sub_block=0, scale=None):
    """softmax(q K^T * scale) V in fp32 over every cache slot and the chunk, under the dense
    [T, S + T] mask (`full_mask`), rounded once to q's dtype. GQA: query head h reads kv head
    h // (Hq / Hkv)."""
    _check(q, k, v, k_cache, v_cache)
    T, Hq, D = q.shape
    if T == 0:
        return q.new_empty(0, Hq, D)
    scale = 1.0 / math.sqrt(D) if scale is None else scale
    mask = full_mask(pattern, T, k_cache.shape[1], cache_len, sub_block, q.device)
    keys = torch.cat([k_cache, k.transpose(0, 1)], dim=1)  # [Hkv, S+T, D]
    vals = torch.cat([v_cache, v.transpose(0, 1)], dim=1)
    out = F.scaled_dot_product_attention(q.transpose(0, 1).float(), keys.float(), vals.float(), attn_mask=mask,
                                         scale=scale, enable_gqa=True)
    return out.transpose(0, 1).to(q.dtype)


# ------------------------------------------------------------------------------------------------
# Triton kernel: flash attention over (cache slice, chunk) with the mask computed from indices.
#
# One program owns a tile of BLOCK_M "packed rows" of one kv head: row r is query token r // G,
# query head kv_head * G + r % G, so a GQA group shares every K/V tile it loads (a decode step with
# 8 query heads per kv head reads the cache once, not 8 times). The third grid axis splits the
# committed cache into SPLIT equal shares of the *device-side* length (flash-decoding); the last
# share also takes the chunk. With SPLIT > 1 each program writes an unnormalised partial
# (m, l, acc) and a small combine kernel merges them.
# ------------------------------------------------------------------------------------------------
_LOG2E = 1.4426950408889634


@triton.jit
def _softmax_step(acc, m_i, l_i, q, kt, v, visible, qk_scale, MASKED: tl.constexpr, PREC: tl.constexpr):
    # Scores are in the log2 domain (qk_scale includes log2(e)). m_i starts finite (-1e30), so a
    # row that sees nothing in this tile keeps alpha = 1 and p = 0 instead of computing inf - inf.
    s = tl.dot(q, kt, input_precision=PREC) * qk_scale
    if MASKED:
        s = tl.where(visible, s, float("-inf"))
    m_new = tl.maximum(m_i, tl.max(s, 1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    l_i = l_i * alpha + tl.sum(p, 1)
    acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
    return acc, m_new, l_i


@triton.jit
def _attn_fwd(
    Q, K, V, KC, VC, CACHE_LEN, O, PM, PL, PACC, ANC, STARTS, BASES,
    T, S, HQ, sub_block, anc_w, qk_scale,
    sq_t, sq_h, sk_t, sk_h, sv_t, sv_h, skc_h, skc_s, svc_h, svc_s, so_t, so_h,
    G: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, PATTERN: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, SPLIT: tl.constexpr, PREC: tl.constexpr,
    VARLEN: tl.constexpr = False,
):
    pid_m = tl.program_id(0)
    kvh = tl.program_id(1)
    split = tl.program_id(2)
    T_all = T  # rows of the partials (SPLIT > 1): every flat row of the launch
    if VARLEN:
        # Axis 1 is (segment, kv head). The segment's rows [STARTS[b], STARTS[b+1]) of the flat
        # q / k / v / out, its region at slot BASES[b] of the cache (S = the region size) and its
        # committed length CACHE_LEN[b] are read here, so the host needs no lengths, only the grid's
        # upper bounds. From here on T is the segment's row count and every pointer is the segment's.
        seg = kvh // (HQ // G)
        kvh = kvh % (HQ // G)
        row0 = tl.load(STARTS + seg).to(tl.int32)
        T = tl.load(STARTS + seg + 1).to(tl.int32) - row0
        if pid_m * BLOCK_M >= T * G:  # a tile past this segment's rows (the grid fits the longest)
            return
        base = tl.load(BASES + seg).to(tl.int64)
        Q += row0.to(tl.int64) * sq_t
        K += row0.to(tl.int64) * sk_t
        V += row0.to(tl.int64) * sv_t
        O += row0.to(tl.int64) * so_t
        KC += base * skc_s
        VC += base * svc_s
        CACHE_LEN += seg

    rows = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    row_ok = rows < T * G
    t = rows // G
    h = kvh * G + rows % G
    offs_d = tl.arange(0, BLOCK_D)
    d_ok = offs_d < HEAD_D
    offs_n = tl.arange(0, BLOCK_N)

    # Padding rows (past T * G) read the last token's row instead of being masked: they are never
    # stored, and the row mask is then needed only at the final store, not live across every loop
    # (triton 3.6's ptxas spilled it).
    q_row = tl.minimum(t, T - 1).to(tl.int64) * sq_t + h.to(tl.int64) * sq_h
    q = tl.load(Q + q_row[:, None] + offs_d[None, :], mask=d_ok[None, :], other=0.0)

    m_i = tl.zeros([BLOCK_M], dtype=tl.float32) - 1.0e30
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)

    # (a) This program's share of the committed cache. Shares are whole BLOCK_N tiles, so only the
    # very last tile of the cache needs a key mask; shares past the length are empty loops.
    n_cache = tl.minimum(tl.load(CACHE_LEN).to(tl.int32), S)
    share = tl.cdiv(tl.cdiv(n_cache, SPLIT), BLOCK_N) * BLOCK_N
    lo = split * share
    hi = tl.minimum(lo + share, n_cache)
    full_hi = lo + tl.maximum(hi - lo, 0) // BLOCK_N * BLOCK_N
    kc_base = KC + kvh.to(tl.int64) * skc_h
    vc_base = VC + kvh.to(tl.int64) * svc_h
    # Only a scalar tile pointer is loop-carried (int64: S * D can be large); the in-tile offsets
    # are loop-invariant int32 (a carried tensor of 64-bit pointers would cost ~128 registers).
    kc_tile = offs_d[:, None] + offs_n[None, :] * skc_s  # K^T [D, N]
    vc_tile = offs_n[:, None] * svc_s + offs_d[None, :]  # V [N, D]
    kc_at = kc_base + lo.to(tl.int64) * skc_s
    vc_at = vc_base + lo.to(tl.int64) * svc_s
    for start in range(lo, full_hi, BLOCK_N):
        kt = tl.load(kc_at + kc_tile, mask=d_ok[:, None], other=0.0)
        v = tl.load(vc_at + vc_tile, mask=d_ok[None, :], other=0.0)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, kt, v, row_ok, qk_scale, False, PREC)
        kc_at += BLOCK_N * skc_s
        vc_at += BLOCK_N * svc_s
    if full_hi < hi:
        n_ok = full_hi + offs_n < hi
        kt = tl.load(kc_at + kc_tile, mask=d_ok[:, None] & n_ok[None, :], other=0.0)
        v = tl.load(vc_at + vc_tile, mask=n_ok[:, None] & d_ok[None, :], other=0.0)
        acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, kt, v, n_ok[None, :], qk_scale, True, PREC)

    # (b) The chunk's own keys, under PATTERN, on the last share only.
    if split == SPLIT - 1:
        t_first = (pid_m * BLOCK_M) // G
        t_last = (tl.minimum(pid_m * BLOCK_M + BLOCK_M, T * G) - 1) // G
        if PATTERN == 0:  # CAUSAL: keys 0..t_first are visible to every row of the tile
            c_hi = tl.minimum(T, t_last + 1)
            c_full = (t_first + 1) // BLOCK_N * BLOCK_N
        elif PATTERN == 1:  # BIDIRECTIONAL
            c_hi = T
            c_full = T // BLOCK_N * BLOCK_N
        else:  # QUADRATIC, TREE: up to the end of the last row's sub-block (an ancestor precedes
            # its node); every tile is masked
            c_hi = tl.minimum(T, (t_last // sub_block + 1) * sub_block)
            c_full = 0
        k_tile = offs_d[:, None] + offs_n[None, :] * sk_t
        v_tile = offs_n[:, None] * sv_t + offs_d[None, :]
        k_at = K + kvh.to(tl.int64) * sk_h
        v_at = V + kvh.to(tl.int64) * sv_h
        for start in range(0, c_full, BLOCK_N):
            kt = tl.load(k_at + k_tile, mask=d_ok[:, None], other=0.0)
            v = tl.load(v_at + v_tile, mask=d_ok[None, :], other=0.0)
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, kt, v, row_ok, qk_scale, False, PREC)
            k_at += BLOCK_N * sk_t
            v_at += BLOCK_N * sv_t
        for start in range(c_full, c_hi, BLOCK_N):
            j = start + offs_n
            j_ok = j < T
            if PATTERN == 0:
                visible = j_ok[None, :] & (j[None, :] <= t[:, None])
            elif PATTERN == 1:
                visible = j_ok[None, :]
            elif PATTERN == 2:
                qb = t // sub_block
                kb = j // sub_block
                anchor = ((j % sub_block) == 0)[None, :] & (kb[None, :] <= qb[:, None])
                own = ((t % sub_block) > 0)[:, None] & (kb[None, :] == qb[:, None])
                visible = j_ok[None, :] & (anchor | own)
            else:  # TREE: key node kb's bit in the query node's ancestor row
                qb = tl.minimum(t, T - 1) // sub_block
                kb = j // sub_block
                words = tl.load(ANC + qb[:, None] * anc_w + (kb // 32)[None, :], mask=j_ok[None, :], other=0)
                bit = (words >> (kb % 32)[None, :]) & 1
                anchor = ((j % sub_block) == 0)[None, :] & (bit != 0)
                own = ((t % sub_block) > 0)[:, None] & (kb[None, :] == qb[:, None])
                visible = j_ok[None, :] & (anchor | own)
            kt = tl.load(k_at + k_tile, mask=d_ok[:, None] & j_ok[None, :], other=0.0)
            v = tl.load(v_at + v_tile, mask=j_ok[:, None] & d_ok[None, :], other=0.0)
            acc, m_i, l_i = _softmax_step(acc, m_i, l_i, q, kt, v, visible, qk_scale, True, PREC)
            k_at += BLOCK_N * sk_t
            v_at += BLOCK_N * sv_t

    out_mask = row_ok[:, None] & d_ok[None, :]
    if SPLIT == 1:
        o_row = t.to(tl.int64) * so_t + h.to(tl.int64) * so_h
        l_i = tl.where(row_ok, l_i, 1.0)  # padding rows: keep 0/0 out of the (masked) store
        tl.store(O + o_row[:, None] + offs_d[None, :], (acc / l_i[:, None]).to(O.dtype.element_ty), mask=out_mask)
    else:
        if VARLEN:  # partials are indexed by flat row, so the combine merges per global row
            p_row = split.to(tl.int64) * T_all * HQ + (row0 + t) * HQ + h
        else:
            p_row = split.to(tl.int64) * T * HQ + t * HQ + h
        tl.store(PM + p_row, m_i, mask=row_ok)
        tl.store(PL + p_row, l_i, mask=row_ok)
        tl.store(PACC + p_row[:, None] * HEAD_D + offs_d[None, :], acc, mask=out_mask)


@triton.jit
def _attn_combine(PM, PL, PACC, O, R, HQ, so_t, so_h,
                  HEAD_D: tl.constexpr, BLOCK_D: tl.constexpr, BLOCK_R: tl.constexpr, SPLIT: tl.constexpr):
    # BLOCK_R (query token, query head) rows per program: rescale each split's partial by
    # 2^(m_s - max_s m_s) and normalise by the rescaled sum of the l_s.
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    row_ok = rows < R
    offs_d = tl.arange(0, BLOCK_D)
    mask = row_ok[:, None] & (offs_d < HEAD_D)[None, :]
    m_max = tl.zeros([BLOCK_R], dtype=tl.float32) - 1.0e30
    for s in range(SPLIT):
        m_max = tl.maximum(m_max, tl.load(PM + s * R + rows, mask=row_ok, other=-1.0e30))
    l_sum = tl.zeros([BLOCK_R], dtype=tl.float32)
    acc = tl.zeros([BLOCK_R, BLOCK_D], dtype=tl.float32)
    for s in range(SPLIT):
        p_row = rows.to(tl.int64) + s * R
        w = tl.exp2(tl.load(PM + p_row, mask=row_ok, other=-1.0e30) - m_max)
        l_sum += w * tl.load(PL + p_row, mask=row_ok, other=0.0)
        acc += w[:, None] * tl.load(PACC + p_row[:, None] * HEAD_D + offs_d[None, :], mask=mask, other=0.0)
    l_sum = tl.where(row_ok, l_sum, 1.0)
    o_row = (rows // HQ).to(tl.int64) * so_t + (rows % HQ).to(tl.int64) * so_h
    tl.store(O + o_row[:, None] + offs_d[None, :], (acc / l_sum[:, None]).to(O.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Config space. A config is (BLOCK_M, BLOCK_N, num_warps, num_stages, SPLIT). Prefill tiles are
# wide in M; decode tiles are 16 packed rows with the cache split over SPLIT programs. Per arch:
# sm_90 lowers the M>=64 tiles to wgmma and has 227 KB of shared memory; sm_80 163 KB; sm_120/121
# (GB10) has 99 KB and mma.sync only, so it gets shallower pipelines.
# Register pressure on the mma.sync archs (sm_80, sm_120/121): triton lays the warps of a chained
# dot out along the longer side of P @ V, [BLOCK_M, head_dim]. With BLOCK_M >= head_dim they stack
# along M and each warp holds its own rows of Q and P; with BLOCK_M < head_dim every warp holds all
# of Q and P (64 x 128 bf16 Q alone is 128 registers a thread), which is why the SPLIT=1 prefill
# tiles there are 128 rows tall, BLOCK_N=32 (64 spills), and the 16-row decode tiles with
# BLOCK_N=128 take 8 warps (each holding a quarter of the K / V tile, not half). Every tile listed
# compiles without spills at head_dim 64 and 128 under triton 3.6 and 3.9 (`trikern check-kernels`).
# ------------------------------------------------------------------------------------------------
_PREFILL_TILES = {
    80: [(128, 32, 8, 3), (128, 32, 8, 2)],
    90: [(128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3), (128, 32, 8, 4)],
    120: [(128, 32, 8, 2), (128, 32, 8, 3)],
}
_DECODE_TILES = {
    80: [(16, 64, 4, 3), (16, 128, 8, 2), (32, 64, 4, 3)],
    90: [(16, 64, 4, 4), (16, 128, 8, 3), (32, 64, 4, 4)],
    120: [(16, 64, 4, 2), (16, 128, 8, 2), (32, 64, 4, 2)],
}
_SPLITS = (1, 4, 16, 32)
# The M=64 prefill tile also comes with cache splits, for the 8..64-token chunks of speculative and
# diffusion steps (packed rows 32..256) over a long cache, which would otherwise launch few programs.
_MID_TILE = {80: (64, 32, 8, 3), 90: (64, 64, 4, 3), 120: (64, 32, 8, 2)}
_MID_SPLITS = (4, 16)
_DEFAULT_ARCH = 80  # config space used under the interpreter


def _arch_family(arch: int) -> int:
    return 120 if arch >= 120 else 90 if arch >= 90 else 80


# Tiles (BLOCK_M, BLOCK_N, num_warps, num_stages) whose TREE compile spills or overflows shared memory
# under triton 3.9 (`trikern check-kernels`): the ancestor-word gather of every masked chunk tile holds
# one [BLOCK_M, BLOCK_N] int32 tile more than QUADRATIC's index arithmetic. TREE launches skip them.
_TREE_SKIP = {90: {(128, 64, 8, 3), (128, 64, 8, 4), (64, 64, 4, 3)}, 120: {(128, 32, 8, 3)}}


def tree_tile_ok(arch: int, cfg: dict) -> bool:
    tile = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"])
    return tile not in _TREE_SKIP.get(_arch_family(arch), ())


# Split tiles whose VARLEN compile spills under triton 3.6 (the GPU image's; 3.9 holds them at 255
# registers): the per-segment bounds stay live across the cache loop. Varlen launches skip them.
_VARLEN_SPLIT_SKIP = {80: {(64, 32, 8, 3)}}


def varlen_tile_ok(arch: int, cfg: dict) -> bool:
    tile = (cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["num_warps"], cfg["num_stages"])
    return cfg["SPLIT"] == 1 or tile not in _VARLEN_SPLIT_SKIP.get(_arch_family(arch), ())


def config_space(arch: int) -> list[dict]:
    """Every shipped config for compute capability `arch` (before pruning by shared memory)."""
    fam = _arch_family(arch)
    mk = lambda bm, bn, w, st, sp: dict(BLOCK_M=bm, BLOCK_N=bn, num_warps=w, num_stages=st, SPLIT=sp)  # noqa: E731
    return ([mk(*tile, 1) for tile in _PREFILL_TILES[fam]]
            + [mk(*tile, sp) for tile in _DECODE_TILES[fam] for sp in _SPLITS]
            + [mk(*_MID_TILE[fam], sp) for sp in _MID_SPLITS])


def _block_d(D: int) -> int:
    return max(16, triton.next_power_of_2(D))


def smem_estimate(cfg: dict, D: int, arch: int, elem_bytes: int = 2) -> int:
    """Shared memory of one program, fitted to triton 3.9's compiles: num_stages - 1 buffered K and
    V tiles, a Q tile (three on sm_90, for wgmma operands and layout scratch) and P."""
    bd, bm, bn = _block_d(D), cfg["BLOCK_M"], cfg["BLOCK_N"]
    q_tiles = 3 if _arch_family(arch) == 90 else 1
    return elem_bytes * (max(cfg["num_stages"] - 1, 1) * 2 * bn * bd + q_tiles * bm * bd + bm * bn)


def _candidates(arch: int, rows: int, kv_heads: int, S: int, D: int, elem_bytes: int, pattern: int = CAUSAL,
                varlen: bool = False) -> list[dict]:
    """The configs worth trying for one shape: tiles no taller than the packed rows need (decode
    tiles only when rows are few, prefill tiles only when they are many), and cache splits only
    when the grid would otherwise be small and each share still holds a couple of tiles (TREE: not
    the tiles of `_TREE_SKIP`; varlen: not those of `_VARLEN_SPLIT_SKIP`)."""
    from .autotune import bucket

    need = bucket(rows)
    out = []
    for c in config_space(arch):
        if c["BLOCK_M"] > need or (rows > 64 and c["BLOCK_M"] < 64):
            continue
        if (pattern == TREE and not tree_tile_ok(arch, c)) or (varlen and not varlen_tile_ok(arch, c)):
            continue
        if c["SPLIT"] > 1:
            tiles = triton.cdiv(rows, c["BLOCK_M"]) * kv_heads
            if tiles >= 128 or S < 2 * c["SPLIT"] * c["BLOCK_N"]:
                continue
        out.append(c)
    return _prune_for(arch, out, D, elem_bytes)


def _prune_for(arch: int, configs: list[dict], D: int, elem_bytes: int) -> list[dict]:
    from .autotune import prune

    return prune(configs, arch, lambda c: smem_estimate(c, D, arch, elem_bytes))




# ------------------------------------------------------------------------------------------------
# Launcher
# ------------------------------------------------------------------------------------------------
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_COMBINE_ROWS = 16


def _cache_len_tensor(cache_len, S: int, device) -> torch.Tensor:
    """cache_len as a device scalar for the kernel to load (a tensor is used as is: no host sync)."""
    if torch.is_tensor(cache_len):
        if cache_len.numel() != 1 or cache_len.dtype not in (torch.int32, torch.int64):
            raise ValueError(f"attention: cache_len tensor must hold one int32/int64, got shape "
                             f"{tuple(cache_len.shape)} dtype {cache_len.dtype}")
        if cache_len.device != device:
            raise ValueError(f"attention: cache_len is on {cache_len.device}, the tensors on {device}")
        return cache_len
    n = int(cache_len)
    if not 0 <= n <= S:
        raise ValueError(f"attention: cache_len={n} outside the cache capacity [0, {S}]")
    return torch.full((), n, dtype=torch.int64, device=device)


def _check_triton_dtypes(q, k, v, k_cache, v_cache):
    for name, x in (("k", k), ("v", v), ("k_cache", k_cache), ("v_cache", v_cache)):
        if x.dtype != q.dtype or x.device != q.device:
            raise ValueError(f"attention: {name} is {x.dtype} on {x.device}, q is {q.dtype} on {q.device}")
    if q.dtype not in _DTYPES:
        raise ValueError(f"attention: dtype {q.dtype} not supported (float16, bfloat16, float32)")


def _kernel_inputs(*xs):
    """The tensors as the kernel reads them: fp32 for bf16 under the interpreter (its bf16 tl.dot is
    wrong), head_dim the contiguous axis (vectorised loads; the other strides are free)."""
    if interpreting() and xs[0].dtype == torch.bfloat16:
        xs = tuple(x.float() for x in xs)
    return tuple(x if x.stride(-1) == 1 else x.contiguous() for x in xs)


def _launch(cfg, grid, q, k, v, k_cache, v_cache, lens, out, anc, starts, bases, S, pattern, sub_block, anc_w,
            scale, varlen):
    """One `_attn_fwd` launch over `grid` (+ the combine when cfg splits the cache); writes `out`.
    Single-sequence: lens is the 0-dim committed length, S the cache capacity (starts, bases unread).
    Varlen: lens / starts / bases the per-segment device tensors, S the region size."""
    N, Hq, D = q.shape
    split = cfg["SPLIT"]
    BLOCK_D = _block_d(D)
    if split > 1:
        pm = torch.empty(split, N * Hq, dtype=torch.float32, device=q.device)
        pl = torch.empty_like(pm)
        pacc = torch.empty(split, N * Hq, D, dtype=torch.float32, device=q.device)
    else:
        pm = pl = pacc = out  # unused: the SPLIT == 1 branch stores straight into out
    _attn_fwd[grid](
        q, k, v, k_cache, v_cache, lens, out, pm, pl, pacc, anc, starts, bases,
        N, S, Hq, max(int(sub_block), 1), anc_w, scale * _LOG2E,
        q.stride(0), q.stride(1), k.stride(0), k.stride(1), v.stride(0), v.stride(1),
        k_cache.stride(0), k_cache.stride(1), v_cache.stride(0), v_cache.stride(1),
        out.stride(0), out.stride(1),
        G=Hq // k.shape[1], HEAD_D=D, BLOCK_D=BLOCK_D, PATTERN=pattern, BLOCK_M=cfg["BLOCK_M"],
        BLOCK_N=cfg["BLOCK_N"], SPLIT=split, PREC="ieee" if q.dtype == torch.float32 else "tf32", VARLEN=varlen,
        num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], enable_fp_fusion=FP_FUSION,
    )
    if split > 1:
        _attn_combine[(triton.cdiv(N * Hq, _COMBINE_ROWS),)](
            pm, pl, pacc, out, N * Hq, Hq, out.stride(0), out.stride(1),
            HEAD_D=D, BLOCK_D=BLOCK_D, BLOCK_R=_COMBINE_ROWS, SPLIT=split, num_warps=4,
            enable_fp_fusion=FP_FUSION)
    return out


def attention_triton(q, k, v, k_cache, v_cache, cache_len, pattern=CAUSAL, sub_block=0, scale=None, config=None):
    """The Triton kernel behind `attention`. `config` pins a launch config (tests, benchmarks);
    otherwise one is chosen per shape bucket through trikern.kernels.autotune."""
    _check(q, k, v, k_cache, v_cache)
    T, Hq, D = q.shape
    Hkv, S = k_cache.shape[0], k_cache.shape[1]
    _check_triton_dtypes(q, k, v, k_cache, v_cache)
    if pattern not in KNOWN_PATTERNS:
        raise _bad_pattern(pattern)
    if pattern == QUADRATIC and (sub_block < 1 or T % sub_block):
        raise ValueError(f"quadratic attention: chunk length {T} is not a multiple of sub_block={sub_block}")
    anc, anc_w = q, 0  # unread unless TREE
    if pattern == TREE:
        tree = check_tree(sub_block, T, q.device)
        anc, anc_w, sub_block = tree.ancestors.contiguous(), tree.ancestors.shape[1], tree.sub_block
    n = _cache_len_tensor(cache_len, S, q.device)
    out_dtype = q.dtype
    if T == 0:
        return q.new_empty(0, Hq, D)
    q, k, v, k_cache, v_cache = _kernel_inputs(q, k, v, k_cache, v_cache)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    G = Hq // Hkv
    rows = T * G
    out = torch.empty(T, Hq, D, dtype=q.dtype, device=q.device)

    def run(cfg):
        grid = (triton.cdiv(rows, cfg["BLOCK_M"]), Hkv, cfg["SPLIT"])
        return _launch(cfg, grid, q, k, v, k_cache, v_cache, n, out, anc, n, n, S, pattern, sub_block, anc_w,
                       scale, varlen=False)

    if config is None:
        from . import autotune

        arch = autotune.arch_of(q.device) if q.is_cuda and not interpreting() else _DEFAULT_ARCH
        configs = _candidates(arch, rows, Hkv, S, D, q.element_size(), pattern)
        key = (int(pattern), autotune.bucket(rows), G, Hkv, autotune.bucket(S), D, autotune.dtype_key(q))
        config = autotune.choose("attention", key, configs, run)
    run(config)
    return out.to(out_dtype)


# ------------------------------------------------------------------------------------------------
# `trikern check-kernels` and `trikern tune`
# ------------------------------------------------------------------------------------------------
_FWD_CONSTEXPRS = ("G", "HEAD_D", "BLOCK_D", "PATTERN", "BLOCK_M", "BLOCK_N", "SPLIT", "PREC", "VARLEN")
_COMBINE_CONSTEXPRS = ("HEAD_D", "BLOCK_D", "BLOCK_R", "SPLIT")


def _fwd_signature(dtype: str) -> dict:
    sig = {name: "i32" for name in _attn_fwd.arg_names if name not in _FWD_CONSTEXPRS}
    sig.update({p: f"*{dtype}" for p in ("Q", "K", "V", "KC", "VC", "O")})
    sig.update(CACHE_LEN="*i64", PM="*fp32", PL="*fp32", PACC="*fp32", ANC="*i32", STARTS="*i64", BASES="*i64",
               qk_scale="fp32")
    return sig


# Arguments that are multiples of 16 (elements or bytes) for contiguous NLD tensors: the JIT
# specialises them as such at run time, so an ahead-of-time compile must too to see the same
# vectorised, pipelined code.
_FWD_ALIGNED = ("Q", "K", "V", "KC", "VC", "O", "PM", "PL", "PACC", "HQ", "sq_t", "sq_h", "sk_t", "sk_h",
                "sv_t", "sv_h", "skc_h", "skc_s", "svc_h", "svc_s", "so_t", "so_h")
_COMBINE_ALIGNED = ("PM", "PL", "PACC", "O", "R", "HQ", "so_t", "so_h")


def _variant(name, fn, sig, constexprs, cfg, aligned):
    from .aot import AotVariant

    return AotVariant(name, fn, sig, constexprs, cfg, attrs={a: [["tt.divisibility", 16]] for a in aligned})


def aot_variants(arch: int):
    """What the launcher can compile on `arch` for the NLD models (bf16, 4 query heads per kv head):
    every config at head_dim 128 under CAUSAL; each tile also under QUADRATIC and TREE (the most mask
    arithmetic; TREE: the tiles it launches), under BIDIRECTIONAL and at head_dim 64; the same again
    in varlen mode (`attention_varlen_fwd`, no TREE); the combine kernel for every split count."""
    def fwd(cfg, D, pattern, tag, varlen=False):
        cons = dict(G=4, HEAD_D=D, BLOCK_D=_block_d(D), PATTERN=pattern, BLOCK_M=cfg["BLOCK_M"],
                    BLOCK_N=cfg["BLOCK_N"], SPLIT=cfg["SPLIT"], PREC="tf32", VARLEN=varlen)
        name = "attention_varlen_fwd" if varlen else "attention_fwd"
        return _variant(f"{name}[{tag},D={D}]", _attn_fwd, _fwd_signature("bf16"), cons, cfg, _FWD_ALIGNED)

    out = []
    for varlen in (False, True):
        for D in (128, 64):
            space = [c for c in _prune_for(arch, config_space(arch), D, 2) if not varlen or varlen_tile_ok(arch, c)]
            tiles = [c for c in space if c["SPLIT"] == 1]
            out += [fwd(c, D, CAUSAL, "causal", varlen) for c in (space if D == 128 else tiles)]
            if D == 128:
                out += [fwd(c, D, QUADRATIC, "quadratic", varlen) for c in tiles]
                if not varlen:
                    out += [fwd(c, D, TREE, "tree") for c in tiles if tree_tile_ok(arch, c)]
                out += [fwd(c, D, BIDIRECTIONAL, "bidirectional", varlen) for c in tiles]
    sig = {n: "i32" for n in _attn_combine.arg_names if n not in _COMBINE_CONSTEXPRS}
    sig.update(PM="*fp32", PL="*fp32", PACC="*fp32", O="*bf16")
    for split in _SPLITS[1:]:
        cfg = dict(num_warps=4, SPLIT=split)
        out.append(_variant("attention_combine[D=128]", _attn_combine, sig,
                            dict(HEAD_D=128, BLOCK_D=128, BLOCK_R=_COMBINE_ROWS, SPLIT=split), cfg, _COMBINE_ALIGNED))
    return out


def tune_shapes(device):
    """Representative launches for `trikern tune`: NLD heads (32 query / 8 kv, head_dim 128), bf16.
    Decode-shaped (one token, a linear-step block, a quadratic step) over a long cache, and prefill."""
    def thunk(T, S, n, pattern, sub_block=0):
        def go():
            g = torch.Generator(device=device).manual_seed(0)
            r = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=torch.bfloat16)  # noqa: E731
            attention_triton(r(T, 32, 128), r(T, 8, 128), r(T, 8, 128), r(8, S, 128), r(8, S, 128),
                             torch.tensor(n, device=device), pattern, sub_block, None)
        return go
    cases = [(1, 4096, 4000, CAUSAL), (1, 32768, 30000, CAUSAL), (8, 4096, 4000, BIDIRECTIONAL),
             (32, 4096, 4000, BIDIRECTIONAL), (32, 32768, 30000, CAUSAL), (72, 4096, 4000, QUADRATIC, 9),
             (512, 4096, 0, CAUSAL), (4096, 4096, 0, CAUSAL)]
    names = {v: k for k, v in PATTERNS.items()}

    def varlen_thunk(chunks, lengths, pattern, region=4096):
        def go():
            g = torch.Generator(device=device).manual_seed(0)
            r = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=torch.bfloat16)  # noqa: E731
            N, B = sum(chunks), len(chunks)
            starts = [0]
            for T in chunks:
                starts.append(starts[-1] + T)
            segs = Varlen(starts, [b * region for b in range(B)], lengths, region)
            attention_varlen_triton(r(N, 32, 128), r(N, 8, 128), r(N, 8, 128), r(8, B * region, 128),
                                    r(8, B * region, 128), segs, pattern)
        return go
    # Batches (trikern/batch): decode steps of 4 sequences, and a prefill chunk riding with them.
    varlen = [([1] * 4, [4000, 1000, 3000, 200], CAUSAL), ([8] * 4, [4000, 1000, 3000, 200], BIDIRECTIONAL),
              ([512, 1, 1, 1], [0, 1000, 3000, 200], CAUSAL)]
    return ([(f"T={c[0]} S={c[1]} {names[c[3]]}", thunk(*c)) for c in cases]
            + [(f"varlen chunks={c[0]} {names[c[2]]}", varlen_thunk(*c)) for c in varlen])


# ------------------------------------------------------------------------------------------------
# Varlen: one launch's chunks of several sequences, each over its own region of one shared cache
# (trikern/batch: a cache with a region of `region` slots per sequence, laid out one after another
# along the slot axis, so a region is an ordinary [Hkv, region, D] cache view).
#
# The Triton path is one `_attn_fwd` launch in VARLEN mode for the whole batch (+ the split
# combine, which merges per flat row): grid (tiles of the longest segment's packed rows, segments
# x kv heads, cache splits). The layout reaches the kernel as device tensors (`VarlenDevice`), so
# only upper bounds size the grid and a CUDA graph per batch bucket can replay the launch with new
# starts / bases / lengths copied into its static tensors.
# ------------------------------------------------------------------------------------------------
class Varlen:
    """The layout of a batched pass: segment b is the chunk rows [starts[b], starts[b+1]) of the
    flat q / k / v, its cache region starts at slot bases[b] of the layer's cache, and it holds
    lengths[b] committed entries there (host ints: the batch driver knows them after each step's
    host read). Every segment is under the same attention pattern, as in `attention`.

    Backends keep per-pass derived tensors (masks, gather indices) in `derived`: every layer of a
    forward asks for the same ones, and a Varlen lives for one forward."""

    __slots__ = ("starts", "bases", "lengths", "region", "derived")

    def __init__(self, starts, bases, lengths, region: int):
        self.starts, self.bases, self.lengths = tuple(map(int, starts)), tuple(map(int, bases)), tuple(map(int, lengths))
        self.region = int(region)
        self.derived: dict = {}
        B = len(self.bases)
        if len(self.starts) != B + 1 or len(self.lengths) != B:
            raise ValueError(f"varlen attention: starts must have len(bases) + 1 = {B + 1} entries and lengths "
                             f"{B}; got {len(self.starts)} and {len(self.lengths)}")
        if self.starts[0] != 0 or any(a > b for a, b in zip(self.starts, self.starts[1:])):
            raise ValueError(f"varlen attention: starts={self.starts} must begin at 0 and not decrease")
        for b in range(B):
            n, T = self.lengths[b], self.starts[b + 1] - self.starts[b]
            if n < 0 or n + T > self.region:
                raise ValueError(f"varlen attention: segment {b} has lengths[b]={n} and {T} chunk tokens; its "
                                 f"region holds {self.region} slots")

    @property
    def count(self) -> int:
        return len(self.bases)

    @property
    def tokens(self) -> int:
        return self.starts[-1]

    def segment(self, b: int) -> tuple[int, int, int, int]:
        """(row start, row end, region base, committed length) of segment b."""
        return self.starts[b], self.starts[b + 1], self.bases[b], self.lengths[b]


def _check_varlen(q, k_cache, segs: Varlen, pattern, sub_block):
    if not isinstance(segs, Varlen):
        raise ValueError(f"varlen attention: segs must be a Varlen; got {type(segs).__name__}")
    seen = ("checked", q.shape[0], k_cache.shape[1], pattern, sub_block)
    if seen in segs.derived:  # every layer of a pass checks the same layout: once is enough
        return
    if q.shape[0] != segs.tokens:
        raise ValueError(f"varlen attention: q has {q.shape[0]} rows, segs.starts ends at {segs.tokens}")
    if pattern not in (CAUSAL, BIDIRECTIONAL, QUADRATIC):
        raise ValueError(f"varlen attention: pattern={pattern!r} not supported (CAUSAL, BIDIRECTIONAL, QUADRATIC)")
    S = k_cache.shape[1]
    for b in range(segs.count):
        a, e, base, _ = segs.segment(b)
        if base < 0 or base + segs.region > S:
            raise ValueError(f"varlen attention: segment {b}'s region [{base}, {base + segs.region}) is outside "
                             f"the cache's {S} slots")
        if pattern == QUADRATIC and (sub_block < 1 or (e - a) % sub_block):
            raise ValueError(f"quadratic attention: segment {b} has {e - a} tokens, not a multiple of "
                             f"sub_block={sub_block}")
    segs.derived[seen] = True


def _per_segment(fn, q, k, v, k_cache, v_cache, segs: Varlen, pattern, sub_block, scale):
    """Each segment through the single-sequence op `fn` over its own cache region."""
    outs = []
    for b in range(segs.count):
        a, e, base, n = segs.segment(b)
        if e > a:
            region = slice(base, base + segs.region)
            outs.append(fn(q[a:e], k[a:e], v[a:e], k_cache[:, region], v_cache[:, region], n, pattern, sub_block,
                           scale))
    return torch.cat(outs) if outs else q.new_empty(0, *q.shape[1:])


def attention_varlen_ref(q, k, v, k_cache, v_cache, segs: Varlen, pattern=CAUSAL, sub_block=0, scale=None):
    """The spec of varlen attention: segment b is `attention_ref` of its rows over its own region
    (k_cache[:, bases[b] : bases[b] + region]) with lengths[b] committed entries. q, k, v: [N, H, D]
    flat over the segments; k_cache, v_cache: one layer [Hkv, slots, D]."""
    _check(q, k, v, k_cache, v_cache)
    _check_varlen(q, k_cache, segs, pattern, sub_block)
    return _per_segment(attention_ref, q, k, v, k_cache, v_cache, segs, pattern, sub_block, scale)


class VarlenDevice:
    """A varlen layout as the Triton kernel reads it: device tensors plus the host-known bounds that
    size its grid. `attention_varlen_triton` builds one from a `Varlen` (once per forward, kept in
    its `derived`); a caller that captures a CUDA graph per batch bucket passes its own, whose
    tensors it refills in place before each replay.

    - starts [B+1], bases [B], lengths [B]: int32 or int64 on q's device; segment b is the flat rows
      [starts[b], starts[b+1]), its region starts at cache slot bases[b], and lengths[b] entries of
      it are committed.
    - region: slots per region (host int); max_rows: an upper bound on every segment's row count
      (host int: it sizes the grid, so a bucket's bound, not this step's).

    Nothing on the device is checked (that would be a host sync). The caller guarantees: starts
    non-decreasing with starts[B] <= q's rows; starts[b+1] - starts[b] <= max_rows (rows past the
    bound are not computed); bases[b] + region <= the cache's slots; lengths[b] + the segment's rows
    <= region; under QUADRATIC each segment's rows a multiple of sub_block. Rows of q outside every
    segment (a bucket's padding) come out as zeros."""

    __slots__ = ("starts", "bases", "lengths", "region", "max_rows")

    def __init__(self, starts: torch.Tensor, bases: torch.Tensor, lengths: torch.Tensor, region: int, max_rows: int):
        self.starts, self.bases, self.lengths = starts, bases, lengths
        self.region, self.max_rows = int(region), int(max_rows)

    @property
    def count(self) -> int:
        return self.bases.shape[0]

    def to_host(self) -> Varlen:
        """The layout as a `Varlen` over the segments' rows (a host read of the device tensors: for
        the backends that take host layouts; rows past starts[B] are outside every segment)."""
        starts, bases, lengths = (x.tolist() for x in (self.starts, self.bases, self.lengths))
        return Varlen(starts, bases, lengths, self.region)

    def check(self, q, k_cache) -> None:
        """The host-side facts only (shapes, dtypes, devices, bounds): no device value is read."""
        B = self.bases.shape[0] if self.bases.dim() == 1 else -1
        for name, x, n in (("starts", self.starts, B + 1), ("bases", self.bases, B), ("lengths", self.lengths, B)):
            if not torch.is_tensor(x) or x.dim() != 1 or x.shape[0] != n or x.dtype not in (torch.int32, torch.int64):
                raise ValueError(f"varlen attention: VarlenDevice.{name} must be a [{n}] int32/int64 tensor "
                                 f"(B={B} segments); got {getattr(x, 'shape', x)!r} {getattr(x, 'dtype', '')}")
            if x.device != q.device:
                raise ValueError(f"varlen attention: VarlenDevice.{name} is on {x.device}, q on {q.device}")
        if not 0 <= self.region <= k_cache.shape[1]:
            raise ValueError(f"varlen attention: VarlenDevice.region={self.region} outside the cache's "
                             f"{k_cache.shape[1]} slots")
        if self.max_rows < 0:
            raise ValueError(f"varlen attention: VarlenDevice.max_rows={self.max_rows} must be >= 0")


def _varlen_device(segs: Varlen, device) -> VarlenDevice:
    """segs as device tensors: one host-to-device copy per forward (every layer reuses it)."""
    key = ("triton", device)
    dev = segs.derived.get(key)
    if dev is None:
        B = segs.count
        W = (B + 2) // 2 * 2  # rows of 16 bytes' multiple: each tensor 16-byte aligned, whatever B
        pad = lambda xs: list(xs) + [0] * (W - len(xs))  # noqa: E731
        flat = torch.tensor([pad(segs.starts), pad(segs.bases), pad(segs.lengths)], dtype=torch.int64, device=device)
        rows = max((e - a for a, e in zip(segs.starts, segs.starts[1:])), default=0)
        dev = segs.derived[key] = VarlenDevice(flat[0, :B + 1], flat[1, :B], flat[2, :B], segs.region, rows)
    return dev


def attention_varlen_triton(q, k, v, k_cache, v_cache, segs, pattern=CAUSAL, sub_block=0, scale=None, config=None):
    """Varlen on the Triton kernel: ONE `_attn_fwd` launch (VARLEN mode; + one `_attn_combine` when
    the config splits the cache) for the whole batch. Grid: (tiles of the longest segment's packed
    rows, segments x kv heads, cache splits); each program reads its segment's row start, region
    base and committed length on the device and exits if its tile is past the segment's rows.

    `segs` is a `Varlen` (checked; its device tensors are built on the first layer and kept in
    `segs.derived`) or a `VarlenDevice` (device tensors used as they are, no host sync: for graph
    capture; see its contract). `config` pins a launch config; otherwise one is chosen per bucket
    (pattern, total packed rows, G, Hkv, region, D, dtype, the longest segment's packed rows)."""
    _check(q, k, v, k_cache, v_cache)
    _check_triton_dtypes(q, k, v, k_cache, v_cache)
    if isinstance(segs, VarlenDevice):
        if pattern not in (CAUSAL, BIDIRECTIONAL, QUADRATIC):
            raise ValueError(f"varlen attention: pattern={pattern!r} not supported (CAUSAL, BIDIRECTIONAL, QUADRATIC)")
        if pattern == QUADRATIC and sub_block < 1:
            raise ValueError(f"quadratic attention: sub_block={sub_block} must be >= 1")
        segs.check(q, k_cache)
        dev = segs
    else:
        _check_varlen(q, k_cache, segs, pattern, sub_block)
        dev = _varlen_device(segs, q.device)
    N, Hq, D = q.shape
    Hkv, B = k_cache.shape[0], dev.count
    G = Hq // Hkv
    out_dtype = q.dtype
    if N == 0 or B == 0 or dev.max_rows == 0:
        return torch.zeros(N, Hq, D, dtype=out_dtype, device=q.device)
    q, k, v, k_cache, v_cache = _kernel_inputs(q, k, v, k_cache, v_cache)
    scale = 1.0 / math.sqrt(D) if scale is None else float(scale)
    # A device layout may leave rows outside every segment (a bucket's padding): zeros there, not
    # whatever the memory held, so the layers after attention see finite values in every row.
    out = (torch.zeros if dev is segs else torch.empty)(N, Hq, D, dtype=q.dtype, device=q.device)
    rows = dev.max_rows * G

    def run(cfg):
        grid = (triton.cdiv(rows, cfg["BLOCK_M"]), B * Hkv, cfg["SPLIT"])
        return _launch(cfg, grid, q, k, v, k_cache, v_cache, dev.lengths, out, q, dev.starts, dev.bases, dev.region,
                       pattern, sub_block, 0, scale, varlen=True)

    if config is None:
        from . import autotune

        arch = autotune.arch_of(q.device) if q.is_cuda and not interpreting() else _DEFAULT_ARCH
        # The split rule counts every program of the grid (kv_heads = segments x kv heads).
        configs = _candidates(arch, rows, B * Hkv, dev.region, D, q.element_size(), pattern, varlen=True)
        key = (int(pattern), autotune.bucket(N * G), G, Hkv, autotune.bucket(dev.region), D, autotune.dtype_key(q),
               autotune.bucket(rows))
        config = autotune.choose("attention_varlen", key, configs, run)
    run(config)
    return out.to(out_dtype)
