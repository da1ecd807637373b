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

Triton path: up to three launches back to back, no host sync between them.
  1. a vocabulary scan, each row's V columns split over SPLIT programs looping over BLOCK_V tiles:
     greedy -- per (row, split) the max logit and its lowest index; sampled -- every program
     recomputes c (L scalar gathers) and scans its columns of row c for argmax(r / noise),
     argmax(p[c] / noise) and whether r has mass. This is the autotuned launch (pure, so
     benchmarking may repeat it).
  2. the cache compaction (stride > 1 only): per (layer, head, D tile), chain chunks of BLOCK_J
     slots are loaded, a CTA barrier, then stored -- the reference's gather-then-scatter although
     source and destination slots overlap (a later chunk never reads a slot an earlier one wrote).
  3. one program combines the partials (ties -> the lowest index, as torch.argmax), writes tokens
     and count, then cache_len += count, after step 2 has read the old length.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION
from .layout import unit_rows
from .vocab_scan import CONFIGS, pick_split, scan_split

# The compaction is in place and not idempotent (a second run would read overwritten slots), so it
# cannot be benchmarked by re-running: one fixed config, sized by head_dim.
COMPACT_BLOCK_J = 16
COMPACT_WARPS = 4
MAX_CHAIN = 256  # the L + 1 rows are combined by one program (B is at most a few dozen)


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


@triton.jit
def _argmax_partial_kernel(x_ptr, score_ptr, idx_ptr, V, sx, chunk, SPLIT, BLOCK_V: tl.constexpr):
    """Greedy scan: max and lowest argmax of row `pid0` over the columns of split `pid1`."""
    row = tl.program_id(0)
    s = tl.program_id(1)
    start = s * chunk
    end = tl.minimum(start + chunk, V)
    base = x_ptr + row.to(tl.int64) * sx
    best_v = tl.full([], float("-inf"), tl.float32)
    best_i = start
    for off in range(start, end, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        x = tl.load(base + cols, mask=cols < end, other=float("-inf")).to(tl.float32)
        tv, ti = tl.max(x, axis=0, return_indices=True)
        better = tv > best_v  # strict: an earlier tile keeps a tie
        best_i = tl.where(better, off + ti, best_i)
        best_v = tl.where(better, tv, best_v)
    tl.store(score_ptr + row * SPLIT + s, best_v)
    tl.store(idx_ptr + row * SPLIT + s, best_i)


@triton.jit
def _first_rejection(draft_ptr, p_ptr, q_ptr, u_ptr, L, sp, sq, BLOCK_L: tl.constexpr):
    """Sampled rule: c = index of the first draft with not (u * q[d] < p[d]), L if none."""
    j = tl.arange(0, BLOCK_L)
    jm = j < L
    d = tl.load(draft_ptr + j, mask=jm, other=0)
    pd = tl.load(p_ptr + j.to(tl.int64) * sp + d, mask=jm, other=0.0).to(tl.float32)
    qd = tl.load(q_ptr + j.to(tl.int64) * sq + d, mask=jm, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + j, mask=jm, other=0.0).to(tl.float32)
    rejected = jm & ~(u * qd < pd)
    return tl.min(tl.where(rejected, j, L), axis=0)


@triton.jit
def _residual_partial_kernel(draft_ptr, p_ptr, q_ptr, u_ptr, e_ptr, score_ptr, idx_ptr, p_score_ptr, p_idx_ptr,
                             res_max_ptr, L, V, sp, sq, chunk, BLOCK_L: tl.constexpr, BLOCK_V: tl.constexpr):
    """Sampled scan over the columns of split `pid0` of row c: the exponential race on
    r = max(p[c] - q[c], 0) (q = 0 when c == L) and on p[c] itself, and the largest r."""
    s = tl.program_id(0)
    c = _first_rejection(draft_ptr, p_ptr, q_ptr, u_ptr, L, sp, sq, BLOCK_L)
    p_row = p_ptr + c.to(tl.int64) * sp
    q_row = q_ptr + c.to(tl.int64) * sq
    start = s * chunk
    end = tl.minimum(start + chunk, V)
    q_end = tl.where(c < L, end, start)  # row L has no q: r = p[L]
    best_r = tl.full([], float("-inf"), tl.float32)
    best_p = tl.full([], float("-inf"), tl.float32)
    idx_r = start
    idx_p = start
    res_max = tl.full([], 0.0, tl.float32)
    for off in range(start, end, BLOCK_V):
        cols = off + tl.arange(0, BLOCK_V)
        m = cols < end
        pc = tl.load(p_row + cols, mask=m, other=0.0).to(tl.float32)
        qc = tl.load(q_row + cols, mask=cols < q_end, other=0.0).to(tl.float32)
        e = tl.load(e_ptr + cols, mask=m, other=1.0).to(tl.float32)
        r = tl.maximum(pc - qc, 0.0)
        res_max = tl.maximum(res_max, tl.max(r, axis=0))
        # IEEE division, as torch's: the race is decided by exact quotients
        sr = tl.where(m, tl.div_rn(r, e), float("-inf"))
        spp = tl.where(m, tl.div_rn(pc, e), float("-inf"))
        tv, ti = tl.max(sr, axis=0, return_indices=True)
        better = tv > best_r
        idx_r = tl.where(better, off + ti, idx_r)
        best_r = tl.where(better, tv, best_r)
        tv, ti = tl.max(spp, axis=0, return_indices=True)
        better = tv > best_p
        idx_p = tl.where(better, off + ti, idx_p)
        best_p = tl.where(better, tv, best_p)
    tl.store(score_ptr + s, best_r)
    tl.store(idx_ptr + s, idx_r)
    tl.store(p_score_ptr + s, best_p)
    tl.store(p_idx_ptr + s, idx_p)
    tl.store(res_max_ptr + s, res_max)


@triton.jit
def _accept_kernel(draft_ptr, score_ptr, idx_ptr, p_score_ptr, p_idx_ptr, res_max_ptr, p_ptr, q_ptr, u_ptr,
                   tok_ptr, count_ptr, len_ptr, L, sp, sq, SPLIT,
                   SAMPLED: tl.constexpr, UPDATE_LEN: tl.constexpr, BLOCK_L: tl.constexpr,
                   BLOCK_S: tl.constexpr):
    """One program: c, tokens, count from the scan's partials, then cache_len += count."""
    j = tl.arange(0, BLOCK_L)
    rows = j < L + 1
    d = tl.load(draft_ptr + j, mask=j < L, other=-1)
    if SAMPLED:
        c = _first_rejection(draft_ptr, p_ptr, q_ptr, u_ptr, L, sp, sq, BLOCK_L)
        first = tl.arange(0, 1)
        has_mass = tl.max(tl.load(res_max_ptr + tl.arange(0, BLOCK_S), mask=tl.arange(0, BLOCK_S) < SPLIT,
                                  other=0.0), axis=0) > 0.0
        extra_r = tl.sum(pick_split(score_ptr, idx_ptr, first, first < 1, SPLIT, BLOCK_S), axis=0)
        extra_p = tl.sum(pick_split(p_score_ptr, p_idx_ptr, first, first < 1, SPLIT, BLOCK_S), axis=0)
        extra = tl.where(has_mass, extra_r, extra_p).to(tl.int64)
        tokens = tl.where(j < c, d, extra)
    else:
        a = pick_split(score_ptr, idx_ptr, j, rows, SPLIT, BLOCK_S).to(tl.int64)
        c = tl.min(tl.where((j < L) & (a != d), j, L), axis=0)
        tokens = a
    tl.store(tok_ptr + j, tl.where(j <= c, tokens, -1), mask=rows)
    count = c.to(tl.int64) + 1
    tl.store(count_ptr, count)
    if UPDATE_LEN:
        n = tl.load(len_ptr)
        tl.store(len_ptr, n + count.to(n.dtype))


@triton.jit
def _compact_kernel(k_ptr, v_ptr, n_ptr, CHAIN, STRIDE, H, SLOTS, D,
                    sk0, sk1, sk2, sk3, sv0, sv1, sv2, sv3,
                    BLOCK_J: tl.constexpr, BLOCK_D: tl.constexpr):
    """Slot n + j*STRIDE -> n + j for j < CHAIN, one (layer, head, D tile) per program."""
    lh = tl.program_id(0)
    layer = (lh // H).to(tl.int64)
    head = (lh % H).to(tl.int64)
    d = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    dm = d < D
    n = tl.load(n_ptr).to(tl.int64)
    kb = k_ptr + layer * sk0 + head * sk1 + d[None, :].to(tl.int64) * sk3
    vb = v_ptr + layer * sv0 + head * sv1 + d[None, :].to(tl.int64) * sv3
    for j0 in range(0, CHAIN, BLOCK_J):
        j = j0 + tl.arange(0, BLOCK_J).to(tl.int64)
        src = n + j * STRIDE
        dst = n + j
        # slots past the cache are never touched (the reference would raise an index error)
        m = ((j < CHAIN) & (src < SLOTS))[:, None] & dm[None, :]
        kk = tl.load(kb + src[:, None] * sk2, mask=m)
        vv = tl.load(vb + src[:, None] * sv2, mask=m)
        # every read of this chunk before any write: a destination slot may be another row's source
        tl.debug_barrier()
        tl.store(kb + dst[:, None] * sk2, kk, mask=m)
        tl.store(vb + dst[:, None] * sv2, vv, mask=m)


def _check_triton(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len):
    dev = target.device
    L, V = draft.shape[0], target.shape[1]
    if V == 0:
        raise ValueError("verify: target has an empty vocabulary dimension (V = 0)")
    if L + 1 > MAX_CHAIN:
        raise ValueError(f"verify: {L} drafts; the Triton kernel takes at most {MAX_CHAIN - 1}")
    named = [("draft", draft), ("draft_probs", draft_probs), ("uniforms", uniforms), ("noise", noise),
             ("k_cache", k_cache), ("v_cache", v_cache), ("cache_len", cache_len)]
    for name, t in named:
        if t is not None and t.device != dev:
            raise ValueError(f"verify: {name} is on {t.device}, target on {dev}")
    for name, t in [("target", target), ("draft_probs", draft_probs), ("uniforms", uniforms), ("noise", noise)]:
        if t is not None and t.dtype not in autotune.FLOAT_DTYPES:
            raise TypeError(f"verify: {name} has dtype {t.dtype}; expected float32, float16 or bfloat16")
    if k_cache is not None:
        if k_cache.dtype != v_cache.dtype:
            raise TypeError(f"verify: k_cache ({k_cache.dtype}) and v_cache ({v_cache.dtype}) differ in dtype")
        if cache_len.dtype.is_floating_point or cache_len.dtype == torch.bool:
            raise TypeError(f"verify: cache_len has dtype {cache_len.dtype}; expected an integer tensor")


def verify_triton(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride, config=None):
    """Triton launcher; `config` forces the vocabulary-scan config (tests), else autotune chooses."""
    _check(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len, stride)
    _check_triton(draft, target, draft_probs, uniforms, noise, k_cache, v_cache, cache_len)
    L, V, dev = draft.shape[0], target.shape[1], target.device
    sampled = draft_probs is not None
    draft = draft.contiguous()
    target = unit_rows(target)
    tokens = torch.empty(L + 1, dtype=torch.long, device=dev)
    count = torch.empty((), dtype=torch.long, device=dev)
    block_l = triton.next_power_of_2(L + 1)
    if sampled:
        q = unit_rows(draft_probs) if L else target  # an empty q is never read: any valid pointer will do
        u = uniforms.contiguous() if L else target
        e = noise.contiguous()
        sq = q.stride(0) if L else 0
    else:
        q = u = e = target
        sq = 0
    # empty tensors (L = 0) may have no storage: hand the kernels any live pointer, they read nothing
    draft_arg = draft if L else tokens
    # The scan's partials, per (row, split) under the greedy rule and per split of row c when sampled:
    #   score, idx      the winner of the rule's race: the max logit and its lowest column (greedy),
    #                   or argmax(r / noise) on the residual r of row c (sampled)
    #   p_score, p_idx  sampled: the same race on p[c] itself, the draw when r has no mass
    #   res_max         sampled: the largest r, i.e. whether r has any mass
    # The same names at the kernels' ends; under the greedy rule the last three alias score / idx
    # and are never read.
    partial = {}

    def run(cfg):
        split, per = scan_split(V, cfg)
        score = torch.empty(L + 1 if not sampled else 1, split, dtype=torch.float32, device=dev)
        idx = torch.empty(score.shape, dtype=torch.int32, device=dev)
        if sampled:
            p_score, p_idx = torch.empty_like(score), torch.empty_like(idx)
            res_max = torch.empty(split, dtype=torch.float32, device=dev)
            _residual_partial_kernel[(split,)](draft_arg, target, q, u, e, score, idx, p_score, p_idx, res_max,
                                               L, V, target.stride(0), sq, per, BLOCK_L=block_l,
                                               BLOCK_V=cfg["BLOCK_V"], num_warps=cfg["num_warps"],
                                               enable_fp_fusion=FP_FUSION)
        else:
            p_score, p_idx, res_max = score, idx, score
            _argmax_partial_kernel[(L + 1, split)](target, score, idx, V, target.stride(0), per, split,
                                                   BLOCK_V=cfg["BLOCK_V"], num_warps=cfg["num_warps"],
                                                   enable_fp_fusion=FP_FUSION)
        partial.update(score=score, idx=idx, p_score=p_score, p_idx=p_idx, res_max=res_max, split=split)

    if config is None:
        key = ("sampled" if sampled else "greedy", autotune.bucket(L + 1), V, autotune.dtype_key(target))
        config = autotune.choose("verify", key, CONFIGS, run)
    # always run the chosen config: a benchmark sweep may have left another config's partials
    run(config)

    update = k_cache is not None
    if update and stride > 1:
        _compact(k_cache, v_cache, cache_len, L + 1, int(stride))
    split = partial["split"]
    block_s = triton.next_power_of_2(split)
    _accept_kernel[(1,)](draft_arg, partial["score"], partial["idx"], partial["p_score"], partial["p_idx"],
                         partial["res_max"], target, q, u, tokens, count, cache_len if update else count, L,
                         target.stride(0), sq, split, SAMPLED=sampled, UPDATE_LEN=update,
                         BLOCK_L=block_l, BLOCK_S=block_s, num_warps=_accept_warps(block_l, block_s),
                         enable_fp_fusion=FP_FUSION)
    return tokens, count


def _accept_warps(block_l: int, block_s: int) -> int:
    """Enough threads that the [BLOCK_L, BLOCK_S] partials stay in registers (16 per thread)."""
    return max(4, min(16, block_l * block_s // 16 // 32))


def _compact_block_d(D: int) -> int:
    return min(triton.next_power_of_2(D), 128)


def _compact(k, v, n, chain, stride):
    layers, H, slots, D = k.shape
    if k.numel() == 0:
        return
    bd = _compact_block_d(D)
    _compact_kernel[(layers * H, triton.cdiv(D, bd))](k, v, n, chain, stride, H, slots, D, *k.stride(), *v.stride(),
                                                      BLOCK_J=COMPACT_BLOCK_J, BLOCK_D=bd, num_warps=COMPACT_WARPS,
                                                      enable_fp_fusion=FP_FUSION)


def tune_shapes(device):
    """Representative launches for `trikern tune`: NLD-sized vocabularies, B = 8 .. 32, both rules."""
    def thunk(L, V, sampled):
        def go():
            g = torch.Generator(device=device).manual_seed(0)
            target = torch.randn(L + 1, V, device=device, generator=g)
            draft = torch.randint(0, V, (L,), device=device, generator=g)
            if sampled:
                p = torch.softmax(target, -1)
                verify_triton(draft, p, torch.softmax(torch.randn_like(target[:L]), -1),
                              torch.rand(L, device=device, generator=g), torch.ones(V, device=device),
                              None, None, None, 1)
            else:
                verify_triton(draft, target.bfloat16(), None, None, None, None, None, None, 1)
        return go
    return [(f"{'sampled' if s else 'greedy'} L={L} V={V}", thunk(L, V, s))
            for V in (32000, 131072) for L in (7, 15, 31) for s in (False, True)]


def aot_variants(arch: int):
    """Every scan config (greedy on bf16 logits, sampled on fp32 probabilities), the accept
    kernel for both rules and the bf16 cache compaction at head_dim 128."""
    from .aot import AotVariant
    out = []
    for c in CONFIGS:
        launch = {"num_warps": c["num_warps"]}
        sig = {"x_ptr": "*bf16", "score_ptr": "*fp32", "idx_ptr": "*i32", "V": "i32", "sx": "i64", "chunk": "i32",
               "SPLIT": "i32"}
        out.append(AotVariant("verify_argmax", _argmax_partial_kernel, sig, {"BLOCK_V": c["BLOCK_V"]},
                              {**c, **launch}))
        sig = {"draft_ptr": "*i64", "p_ptr": "*fp32", "q_ptr": "*fp32", "u_ptr": "*fp32", "e_ptr": "*fp32",
               "score_ptr": "*fp32", "idx_ptr": "*i32", "p_score_ptr": "*fp32", "p_idx_ptr": "*i32",
               "res_max_ptr": "*fp32", "L": "i32", "V": "i32", "sp": "i64", "sq": "i64", "chunk": "i32"}
        out.append(AotVariant("verify_residual", _residual_partial_kernel, sig,
                              {"BLOCK_L": MAX_CHAIN, "BLOCK_V": c["BLOCK_V"]}, {**c, **launch}))
    sig = {"draft_ptr": "*i64", "score_ptr": "*fp32", "idx_ptr": "*i32", "p_score_ptr": "*fp32",
           "p_idx_ptr": "*i32", "res_max_ptr": "*fp32", "p_ptr": "*fp32", "q_ptr": "*fp32", "u_ptr": "*fp32",
           "tok_ptr": "*i64", "count_ptr": "*i64", "len_ptr": "*i64", "L": "i32", "sp": "i64", "sq": "i64",
           "SPLIT": "i32"}
    for sampled in (False, True):
        for block_l in (32, MAX_CHAIN):  # a typical block and the largest chain
            block_s = 32  # the widest split of CONFIGS
            out.append(AotVariant(f"verify_accept{'+sampled' if sampled else ''}", _accept_kernel, sig,
                                  {"SAMPLED": sampled, "UPDATE_LEN": True, "BLOCK_L": block_l, "BLOCK_S": block_s},
                                  {"BLOCK_L": block_l, "num_warps": _accept_warps(block_l, block_s)}))
    sig = {"k_ptr": "*bf16", "v_ptr": "*bf16", "n_ptr": "*i64", "CHAIN": "i32", "STRIDE": "i32", "H": "i32",
           "SLOTS": "i32", "D": "i32", "sk0": "i64", "sk1": "i64", "sk2": "i64", "sk3": "i32",
           "sv0": "i64", "sv1": "i64", "sv2": "i64", "sv3": "i32"}
    out.append(AotVariant("verify_compact", _compact_kernel, sig,
                          {"BLOCK_J": COMPACT_BLOCK_J, "BLOCK_D": _compact_block_d(128)},
                          {"BLOCK_J": COMPACT_BLOCK_J, "num_warps": COMPACT_WARPS}))
    return out
