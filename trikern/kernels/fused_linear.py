"""The decoder layer's projections with their neighbours fused in: one launch each for

- `linear_residual(x, W, residual)` = residual + x @ W.T                       (o_proj, down_proj)
- `norm_linear(x, norm_w, eps, W)` = rmsnorm(x) * norm_w @ W.T
- `norm_gate_up_swiglu(x, norm_w, eps, W_gu)` = silu(h @ Wg.T) * (h @ Wu.T), h = rmsnorm(x) * norm_w
- `norm_qkv_rope_cache(x, norm_w, eps, W_qkv, positions, inv_freq, ...)` = q, k, v of h @ W_qkv.T with
  RoPE applied to q and k, k and v also written to the KV cache's slots `slots`.

x is [M, K] (M = 1 .. ~80 rows: decoding's AR, draft and quadratic steps), every weight [N, K] in
x's dtype (fp32 / fp16 / bf16). The `*_ref` functions are the spec: the unfused model's math (the
refs of rmsnorm.py, rope.py, swiglu.py composed with an fp32 matmul rounded once to x's dtype).

Weight layouts (convert once at load time; `interleave_*` / `deinterleave_*` go both ways):
- gate_up: `interleave_gate_up(Wg, Wu)` -> [2I, K] with row 2i = Wg[i], row 2i + 1 = Wu[i], so any
  output tile of even width holds both halves of its SwiGLU pairs.
- qkv: the rows of the fused [(Hq + 2 Hkv) D, K] weight (q heads, k heads, v heads, D rows each),
  with rows d and d + D/2 of every q and k head placed next to each other (`interleave_qkv`):
  head row 2j = original row j, 2j + 1 = original row j + D/2; v heads unchanged. RoPE rotates the
  pair (d, d + D/2), so a tile holds both halves of every pair it rotates.
The kernel splits a tile's pairs with `tl.reshape(acc, [BM, BN/2, 2])` + `tl.split` and stores
q / k / v in their natural layout.

Rounding -- where fused differs from the unfused path. The projection output is rounded to x's dtype
before the epilogue, as the unfused model stores it (so the SwiGLU / RoPE / residual add see the
same values). The RMSNorm is computed in one pass over x: each K tile of x is multiplied by its
slice of norm_w and rounded once to x's dtype (the MMA's operand), the sum of squares of x is
accumulated in the same loop, and rstd multiplies the fp32 accumulator at the end (h @ W.T = rstd *
((x * w) @ W.T)). The unfused path rounds twice (x * rstd, then * w) before its matmul, so a bf16
result differs from the reference by the rounding of the normed activations: about one ulp of the
output, and no further from exact math than the reference is (bf16, 64 x 4096 -> 512, against fp64:
fused 0.30 % of max|out|, reference 0.35 %, fused vs reference 0.41 %; fp32: reassociation only).
The weight is never changed (no norm folding), so one weight serves the fused and unfused paths.

The qkv op returns q, k and v (views of one [M, Hq + 2 Hkv, D] tensor, as the model's qkv views are):
k and v cost M * 2 Hkv * D stores next to the cache write, and a pass that does not write the
cache (draft, denoise) passes no cache and still gets them.

The kernel is quant_linear's skinny GEMM for plain weights: one program per (N tile, row tile, K
split), configs from `quant_linear.config_space` (FMA tiles for one or two rows, MMA tiles with
the weight as the wide operand otherwise, fp32 in IEEE precision). SPLIT_K > 1 writes fp32
partials (and the partial sums of squares) and `_splitk_epilogue_kernel` adds them in a fixed order
(deterministic) and runs the same epilogue (`_epilogue`). On CUDA the tuner also measures the
unfused path (`TORCH`: the rmsnorm kernel, a cuBLAS matmul, then torch's add, or, for the
interleaved gate_up / qkv weights that rope.py and swiglu.py cannot read, this module's epilogue
kernel), so a fused op is never slower than the separate ops.

Programmatic dependent launch (sm_90+, triton with `tl.extra.cuda.gdc_wait` and the `launch_pdl`
launch option): with PDL the first weight tile -- which no earlier kernel writes -- is loaded before
`gdc_wait`, everything that reads x / residual / the cache or writes comes after it, and
`gdc_launch_dependents` follows the K loop. The loop is the same either way (the first tile is
always peeled), so PDL on or off gives the same bits. Off under the interpreter, before sm_90, on a
triton without the API, and with TRIKERN_PDL=0.
"""
from __future__ import annotations

import functools
import importlib
from dataclasses import dataclass

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION, interpreting
from .rmsnorm import rmsnorm_ref, rmsnorm_triton
from .rope import _sincos, rope_ref
from .swiglu import swiglu_ref

# the module, not the op of the same name that kernels/__init__ exports
_Q = importlib.import_module(".quant_linear", __package__)
TORCH = _Q.TORCH

PLAIN, RESIDUAL, SWIGLU, ROPE = 0, 1, 2, 3  # the epilogues (EPI)
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
_SPLITS = (1, 2, 4)


# ------------------------------------------------------------------------------------------------
# Weight layouts
# ------------------------------------------------------------------------------------------------
def interleave_gate_up(Wg: torch.Tensor, Wu: torch.Tensor) -> torch.Tensor:
    """[I, K] gate and up -> [2I, K] with rows g0, u0, g1, u1, ..."""
    if Wg.shape != Wu.shape or Wg.dim() != 2:
        raise ValueError(f"interleave_gate_up: Wg {tuple(Wg.shape)} and Wu {tuple(Wu.shape)} must be the same [I, K]")
    return torch.stack([Wg, Wu], 1).reshape(2 * Wg.shape[0], Wg.shape[1])


def deinterleave_gate_up(W_gu: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The inverse of `interleave_gate_up`: (Wg, Wu) views."""
    if W_gu.dim() != 2 or W_gu.shape[0] % 2:
        raise ValueError(f"deinterleave_gate_up: W_gu {tuple(W_gu.shape)} must be [2I, K]")
    return W_gu[0::2], W_gu[1::2]


def _pair_perm(heads: int, rot_heads: int, D: int, inverse: bool) -> torch.Tensor:
    half = D // 2
    one = torch.stack([torch.arange(half), torch.arange(half) + half], 1).reshape(D)  # new row -> old row
    if inverse:
        one = torch.argsort(one)
    base = torch.arange(heads)[:, None] * D
    rows = torch.where(torch.arange(heads)[:, None] < rot_heads, base + one[None, :], base + torch.arange(D)[None, :])
    return rows.reshape(-1)


def _check_heads(op, W, Hq, Hkv, D):
    if D <= 0 or D % 2 or Hq <= 0 or Hkv <= 0:
        raise ValueError(f"{op}: heads Hq={Hq}, Hkv={Hkv}, head_dim={D} must be positive, head_dim even")
    if W.dim() != 2 or W.shape[0] != (Hq + 2 * Hkv) * D:
        raise ValueError(f"{op}: W_qkv {tuple(W.shape)} must be [(Hq + 2 Hkv) * D = {(Hq + 2 * Hkv) * D}, K]")


def interleave_qkv(W_qkv: torch.Tensor, Hq: int, Hkv: int, D: int) -> torch.Tensor:
    """The fused [(Hq + 2 Hkv) D, K] qkv weight with rows d and d + D/2 of every q / k head adjacent."""
    _check_heads("interleave_qkv", W_qkv, Hq, Hkv, D)
    return W_qkv[_pair_perm(Hq + 2 * Hkv, Hq + Hkv, D, False).to(W_qkv.device)]


def deinterleave_qkv(W_qkv: torch.Tensor, Hq: int, Hkv: int, D: int) -> torch.Tensor:
    """The inverse of `interleave_qkv`."""
    _check_heads("deinterleave_qkv", W_qkv, Hq, Hkv, D)
    return W_qkv[_pair_perm(Hq + 2 * Hkv, Hq + Hkv, D, True).to(W_qkv.device)]


# ------------------------------------------------------------------------------------------------
# References
# ------------------------------------------------------------------------------------------------
def _lin(h, W):
    """F.linear in fp32, rounded once to h's dtype."""
    return (h.float() @ W.float().T).to(h.dtype)


def linear_residual_ref(x, W, residual):
    """residual + x @ W.T: the projection rounded to x's dtype, then the add rounded once."""
    _check_common("linear_residual", x, W, None, residual)
    return (residual.float() + _lin(x, W).float()).to(x.dtype)


def norm_linear_ref(x, norm_w, eps, W):
    _check_common("norm_linear", x, W, norm_w)
    return _lin(rmsnorm_ref(x, norm_w, eps), W)


def norm_gate_up_swiglu_ref(x, norm_w, eps, W_gu):
    """W_gu in `interleave_gate_up`'s layout; [M, I] out."""
    _check_common("norm_gate_up_swiglu", x, W_gu, norm_w, even_n=True)
    Wg, Wu = deinterleave_gate_up(W_gu)
    h = rmsnorm_ref(x, norm_w, eps)
    return swiglu_ref(_lin(h, Wg), _lin(h, Wu))


def norm_qkv_rope_cache_ref(x, norm_w, eps, W_qkv, positions, inv_freq, attn_factor=1.0, llama4_beta=None,
                            llama4_len=1, k_cache_layer=None, v_cache_layer=None, slots=None, *,
                            kv_heads=None, head_dim=None):
    """(q [M, Hq, D], k [M, Hkv, D], v [M, Hkv, D]) views of one [M, Hq + 2 Hkv, D] tensor, q and k
    rotated; with a cache, k and v are also written to `slots` of k_cache_layer / v_cache_layer
    ([Hkv, S, D] each; nothing else changes). W_qkv in `interleave_qkv`'s layout."""
    g = _check_qkv(x, norm_w, W_qkv, positions, inv_freq, k_cache_layer, v_cache_layer, slots, kv_heads, head_dim)
    h = rmsnorm_ref(x, norm_w, eps)
    qkv = _lin(h, deinterleave_qkv(W_qkv, g.Hq, g.Hkv, g.D)).view(x.shape[0], -1, g.D)
    q, k = rope_ref(qkv[:, :g.Hq], qkv[:, g.Hq:g.Hq + g.Hkv], positions, inv_freq, attn_factor, llama4_beta,
                    llama4_len)
    qkv[:, :g.Hq + g.Hkv] = torch.cat([q, k], 1)
    q, k, v = qkv[:, :g.Hq], qkv[:, g.Hq:g.Hq + g.Hkv], qkv[:, g.Hq + g.Hkv:]
    if k_cache_layer is not None:
        k_cache_layer.index_copy_(1, slots, k.transpose(0, 1))
        v_cache_layer.index_copy_(1, slots, v.transpose(0, 1))
    return q, k, v


# ------------------------------------------------------------------------------------------------
# Checks
# ------------------------------------------------------------------------------------------------
def _check_common(op, x, W, norm_w=None, residual=None, even_n=False):
    """(M, N, K) of a valid call; one clear ValueError naming the tensor otherwise."""
    if not torch.is_tensor(x) or x.dim() != 2:
        raise ValueError(f"{op}: x must be a 2-D [M, K] tensor; got "
                         f"{tuple(x.shape) if torch.is_tensor(x) else type(x).__name__}")
    if x.dtype not in _DTYPES:
        raise ValueError(f"{op}: x has dtype {x.dtype}; expected float32, float16 or bfloat16")
    M, K = x.shape
    if K == 0:
        raise ValueError(f"{op}: x {tuple(x.shape)} has no columns (K=0)")
    if not torch.is_tensor(W) or W.dim() != 2 or W.shape[1] != K:
        raise ValueError(f"{op}: W {tuple(W.shape) if torch.is_tensor(W) else type(W).__name__} must be "
                         f"[N, K={K}] to match x {tuple(x.shape)}")
    N = W.shape[0]
    if W.dtype != x.dtype or W.device != x.device:
        raise ValueError(f"{op}: W ({W.dtype}, {W.device}) must have x's dtype and device ({x.dtype}, {x.device})")
    if even_n and N % 2:
        raise ValueError(f"{op}: W has {N} rows; the interleaved pairs need an even count")
    if norm_w is not None and (not torch.is_tensor(norm_w) or norm_w.shape != (K,) or norm_w.dtype != x.dtype
                               or norm_w.device != x.device):
        raise ValueError(f"{op}: norm_w must be [K={K}] with x's dtype {x.dtype} on {x.device}; got "
                         f"{tuple(norm_w.shape) if torch.is_tensor(norm_w) else type(norm_w).__name__}"
                         f"{f', {norm_w.dtype}, {norm_w.device}' if torch.is_tensor(norm_w) else ''}")
    if residual is not None and (not torch.is_tensor(residual) or residual.shape != (M, N)
                                 or residual.dtype != x.dtype or residual.device != x.device):
        raise ValueError(f"{op}: residual must be [M={M}, N={N}] with x's dtype {x.dtype} on {x.device}; got "
                         f"{tuple(residual.shape) if torch.is_tensor(residual) else type(residual).__name__}"
                         f"{f', {residual.dtype}, {residual.device}' if torch.is_tensor(residual) else ''}")
    return M, N, K


@dataclass(frozen=True)
class _Heads:
    Hq: int
    Hkv: int
    D: int


def _check_qkv(x, norm_w, W, positions, inv_freq, kc, vc, slots, kv_heads, head_dim) -> _Heads:
    op = "norm_qkv_rope_cache"
    M, N, _ = _check_common(op, x, W, norm_w)
    cache = [t is not None for t in (kc, vc, slots)]
    if any(cache) and not all(cache):
        raise ValueError(f"{op}: k_cache_layer, v_cache_layer and slots come together (got "
                         f"{', '.join(n for n, c in zip(('k_cache_layer', 'v_cache_layer', 'slots'), cache) if c)})")
    if kc is not None:
        for name, c in (("k_cache_layer", kc), ("v_cache_layer", vc)):
            if (not torch.is_tensor(c) or c.dim() != 3 or c.dtype != x.dtype or c.device != x.device
                    or c.stride(-1) != 1):
                raise ValueError(f"{op}: {name} must be a [Hkv, S, D] tensor with unit last stride, x's dtype "
                                 f"{x.dtype}, on {x.device}")
        if vc.shape != kc.shape:
            raise ValueError(f"{op}: v_cache_layer {tuple(vc.shape)} must match k_cache_layer {tuple(kc.shape)}")
        for name, want, got in (("kv_heads", kv_heads, kc.shape[0]), ("head_dim", head_dim, kc.shape[2])):
            if want is not None and want != got:
                raise ValueError(f"{op}: {name}={want} but the cache layer has {got}")
        kv_heads, head_dim = kc.shape[0], kc.shape[2]
        if (not torch.is_tensor(slots) or slots.shape != (M,) or slots.dtype not in (torch.int64, torch.int32)
                or slots.device != x.device):
            raise ValueError(f"{op}: slots must be [M={M}] int64 on {x.device}")
    if kv_heads is None or head_dim is None:
        raise ValueError(f"{op}: without a cache, pass kv_heads= and head_dim=")
    D, Hkv = int(head_dim), int(kv_heads)
    if D <= 0 or D % 2 or Hkv <= 0 or N % D or N // D <= 2 * Hkv:
        raise ValueError(f"{op}: W_qkv has {N} rows: not (Hq + 2 Hkv) * D for Hkv={Hkv}, head_dim={D} "
                         "(even) and Hq >= 1")
    if (not torch.is_tensor(positions) or positions.shape != (M,)
            or positions.dtype not in (torch.int64, torch.int32) or positions.device != x.device):
        raise ValueError(f"{op}: positions must be [M={M}] int64 on {x.device}")
    if not torch.is_tensor(inv_freq) or inv_freq.shape != (D // 2,) or inv_freq.device != x.device:
        raise ValueError(f"{op}: inv_freq must be [head_dim / 2 = {D // 2}] on {x.device}")
    return _Heads(N // D - 2 * Hkv, Hkv, D)


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _rope_store(a, b, rm, mmask, p, pmask, O, som, POS, FREQ, KC, VC, SLOT, HQ, HKV, skh, sks, svh, svs, S,
                attn_factor, beta, L, SCALE_Q: tl.constexpr, CACHE: tl.constexpr, HEAD_D: tl.constexpr):
    """Rotate the pairs (a, b) [BM, BP] of interleaved qkv columns (2p, 2p + 1), already rounded to the
    output dtype, and store them as q / k / v in the natural layout (k and v also into the cache)."""
    HALF: tl.constexpr = HEAD_D // 2
    head = p // HALF  # interleaved column 2p lies in head 2p // D
    j = p % HALF  # a q / k pair's frequency index: it holds dims (j, j + D/2)
    rot = head < HQ + HKV
    f = tl.load(FREQ + j, mask=pmask & rot, other=0.0)
    pos = tl.load(POS + rm, mask=mmask, other=0)
    c, s = _sincos(pos.to(tl.float32)[:, None] * f[None, :])  # rope.py's cos / sin of the same fp32 angle
    c = c * attn_factor
    s = s * attn_factor
    y1 = a * c - b * s
    y2 = b * c + a * s
    if SCALE_Q:
        # integer floor(pos / L): exact where an fp32 quotient could round up to the next integer
        scale = (1.0 + beta * tl.log(1.0 + (pos // L).to(tl.float32)))[:, None]
        isq = (head < HQ)[None, :]
        y1 = tl.where(isq, y1 * scale, y1)
        y2 = tl.where(isq, y2 * scale, y2)
    XT: tl.constexpr = O.dtype.element_ty
    y1 = tl.where(rot[None, :], y1, a).to(XT)
    y2 = tl.where(rot[None, :], y2, b).to(XT)
    d1 = tl.where(rot, j, 2 * j)  # v heads are not interleaved: columns 2j, 2j + 1 of the head
    d2 = tl.where(rot, j + HALF, 2 * j + 1)
    m2 = mmask[:, None] & pmask[None, :]
    row = O + rm[:, None] * som + (head * HEAD_D)[None, :]
    tl.store(row + d1[None, :], y1, mask=m2)
    tl.store(row + d2[None, :], y2, mask=m2)
    if CACHE:
        slot = tl.load(SLOT + rm, mask=mmask, other=-1).to(tl.int64)
        ok = m2 & ((slot >= 0) & (slot < S))[:, None]  # a slot outside the cache is not written
        kh = (head - HQ).to(tl.int64)
        isk = ok & (rot & (head >= HQ))[None, :]
        kp = KC + kh[None, :] * skh + slot[:, None] * sks
        tl.store(kp + d1[None, :], y1, mask=isk)
        tl.store(kp + d2[None, :], y2, mask=isk)
        isv = ok & (~rot)[None, :]
        vp = VC + (kh - HKV)[None, :] * svh + slot[:, None] * svs
        tl.store(vp + d1[None, :], y1, mask=isv)
        tl.store(vp + d2[None, :], y2, mask=isv)


@triton.jit
def _epilogue(y, rm, n0, M, N, O, som, R, srm, POS, FREQ, KC, VC, SLOT, HQ, HKV, skh, sks, svh, svs, S,
              attn_factor, beta, L, EPI: tl.constexpr, SCALE_Q: tl.constexpr, CACHE: tl.constexpr,
              HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr):
    """Finish the fp32 projection tile y [BLOCK_M, BLOCK_N] (rows rm, columns n0 ..; rstd applied):
    round it to the output dtype as the unfused model stores it, then the op's epilogue."""
    XT: tl.constexpr = O.dtype.element_ty
    mmask = rm < M
    y = y.to(XT).to(tl.float32)
    if EPI < 2:  # PLAIN, RESIDUAL
        rn = n0 + tl.arange(0, BLOCK_N)
        m2 = mmask[:, None] & (rn < N)[None, :]
        if EPI == 1:
            y = y + tl.load(R + rm[:, None] * srm + rn[None, :], mask=m2, other=0.0).to(tl.float32)
        tl.store(O + rm[:, None] * som + rn[None, :], y.to(XT), mask=m2)
    else:
        a, b = tl.split(tl.reshape(y, [BLOCK_M, BLOCK_N // 2, 2]))  # interleaved columns 2p, 2p + 1
        p = n0 // 2 + tl.arange(0, BLOCK_N // 2)
        pmask = p < N // 2
        if EPI == 2:  # swiglu.py's formula
            out = a / (1.0 + tl.exp(-a)) * b
            tl.store(O + rm[:, None] * som + p[None, :], out.to(XT), mask=mmask[:, None] & pmask[None, :])
        else:
            _rope_store(a, b, rm, mmask, p, pmask, O, som, POS, FREQ, KC, VC, SLOT, HQ, HKV, skh, sks, svh, svs,
                        S, attn_factor, beta, L, SCALE_Q, CACHE, HEAD_D)


@triton.jit
def _w_tile(w_rows, nmask, k0, rk, K, EVEN_K: tl.constexpr):
    """The weight's [BLOCK_N, BLOCK_K] tile at K offset k0, read along K (the row is contiguous)."""
    wm = nmask[:, None]
    if not EVEN_K:
        wm = wm & (k0 + rk < K)[None, :]
    return tl.load(w_rows[:, None] + (k0 + rk)[None, :], mask=wm, other=0.0)


@triton.jit
def _mac(acc, ss, w, x_rows, NW, k0, rk, mmask, K, NORM: tl.constexpr, EVEN_K: tl.constexpr, DOT: tl.constexpr,
         UPCAST: tl.constexpr, PREC: tl.constexpr):
    """acc += the K tile's products (x's tile times norm_w's slice, rounded once to x's dtype, with the
    weight tile w); ss += the tile's sum of x^2 per row (NORM)."""
    kk = k0 + rk
    if DOT:  # x.T [BLOCK_K, BLOCK_M], the MMA's narrow operand
        xm = mmask[None, :]
        if not EVEN_K:
            xm = xm & (kk < K)[:, None]
        x = tl.load(x_rows[None, :] + kk[:, None], mask=xm, other=0.0)
    else:
        xm = mmask[:, None]
        if not EVEN_K:
            xm = xm & (kk < K)[None, :]
        x = tl.load(x_rows[:, None] + kk[None, :], mask=xm, other=0.0)
    if NORM:
        if EVEN_K:
            nw = tl.load(NW + kk).to(tl.float32)
        else:
            nw = tl.load(NW + kk, mask=kk < K, other=0.0).to(tl.float32)
        xf = x.to(tl.float32)
        if DOT:
            ss += tl.sum(xf * xf, axis=0)
            h = (xf * nw[:, None]).to(x.dtype)
        else:
            ss += tl.sum(xf * xf, axis=1)
            h = (xf * nw[None, :]).to(x.dtype)
    else:
        h = x
    if DOT:
        if UPCAST:  # fp32 activations (IEEE products), or bf16 under the interpreter (its bf16 dot is wrong)
            acc = tl.dot(w.to(tl.float32), h.to(tl.float32), acc, input_precision=PREC)
        else:
            acc = tl.dot(w, h, acc, input_precision=PREC)
    else:
        acc += h.to(tl.float32)[:, None, :] * w.to(tl.float32)[None, :, :]
    return acc, ss


@triton.jit
def _fused_linear_kernel(X, NW, W, O, SS, R, POS, FREQ, KC, VC, SLOT,
                         M, N, K, sxm, swn, som, spo, srm, eps, split_k,
                         HQ, HKV, skh, sks, svh, svs, S, attn_factor, beta, L,
                         NORM: tl.constexpr, EPI: tl.constexpr, PARTIAL: tl.constexpr, SCALE_Q: tl.constexpr,
                         CACHE: tl.constexpr, HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                         BLOCK_K: tl.constexpr, DOT: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr,
                         EVEN_K: tl.constexpr, PDL: tl.constexpr):
    """One (N tile, row tile, K split) of x @ W.T with the op's prologue and epilogue (PARTIAL: fp32
    partials [split, M, N] to O and partial sums of squares [split, M] to SS instead)."""
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    mmask = rm < M
    nmask = rn < N
    # 32-bit offsets everywhere but the weight (the launcher checks they fit)
    x_rows = X + rm * sxm
    w_rows = W + rn.to(tl.int64) * swn
    n_tiles = tl.cdiv(K, BLOCK_K)
    # The first weight tile (no earlier kernel writes weights) is loaded before waiting on the previous
    # kernel; without PDL the peeled iteration is the same arithmetic in the same order.
    w = _w_tile(w_rows, nmask, pid_k * BLOCK_K, rk, K, EVEN_K)
    if PDL:
        tl.extra.cuda.gdc_wait()
    if DOT:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    ss = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc, ss = _mac(acc, ss, w, x_rows, NW, pid_k * BLOCK_K, rk, mmask, K, NORM, EVEN_K, DOT, UPCAST, PREC)
    for t in range(pid_k + split_k, n_tiles, split_k):
        w = _w_tile(w_rows, nmask, t * BLOCK_K, rk, K, EVEN_K)
        acc, ss = _mac(acc, ss, w, x_rows, NW, t * BLOCK_K, rk, mmask, K, NORM, EVEN_K, DOT, UPCAST, PREC)
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    if PARTIAL:
        O += pid_k * spo
        if DOT:  # acc is y.T [BLOCK_N, BLOCK_M]
            tl.store(O + rm[None, :] * som + rn[:, None], acc, mask=nmask[:, None] & mmask[None, :])
        else:
            tl.store(O + rm[:, None] * som + rn[None, :], tl.sum(acc, axis=2), mask=mmask[:, None] & nmask[None, :])
        if NORM:
            if pid_n == 0:  # every N tile has the same sums
                tl.store(SS + pid_k * M + rm, ss, mask=mmask)
    else:
        if DOT:
            y = tl.trans(acc)
        else:
            y = tl.sum(acc, axis=2)
        if NORM:
            y = y * tl.rsqrt(ss / K + eps)[:, None]
        _epilogue(y, rm, pid_n * BLOCK_N, M, N, O, som, R, srm, POS, FREQ, KC, VC, SLOT, HQ, HKV, skh, sks, svh,
                  svs, S, attn_factor, beta, L, EPI, SCALE_Q, CACHE, HEAD_D, BLOCK_M, BLOCK_N)


@triton.jit
def _splitk_epilogue_kernel(P, SS, O, R, POS, FREQ, KC, VC, SLOT, M, N, K, spm, sps, split, eps, som, srm,
                            HQ, HKV, skh, sks, svh, svs, S, attn_factor, beta, L,
                            NORM: tl.constexpr, EPI: tl.constexpr, SCALE_Q: tl.constexpr, CACHE: tl.constexpr,
                            HEAD_D: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, PDL: tl.constexpr):
    """y = sum over s of P[s] in the order s = 0, 1, ... (deterministic), times rstd from the summed
    SS (NORM), then the epilogue. P is the main kernel's fp32 partials or, on the unfused path,
    torch's projection in x's dtype (split 1)."""
    rn = tl.program_id(0) * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = tl.program_id(1) * BLOCK_M + tl.arange(0, BLOCK_M)
    mmask = rm < M
    m2 = mmask[:, None] & (rn < N)[None, :]
    if PDL:
        tl.extra.cuda.gdc_wait()
    y = tl.zeros([BLOCK_M, BLOCK_N], dtype=tl.float32)
    for s in range(0, split):
        y += tl.load(P + s * sps + rm[:, None] * spm + rn[None, :], mask=m2, other=0.0).to(tl.float32)
    if NORM:
        ss = tl.zeros([BLOCK_M], dtype=tl.float32)
        for s in range(0, split):
            ss += tl.load(SS + s * M + rm, mask=mmask, other=0.0)
        y = y * tl.rsqrt(ss / K + eps)[:, None]
    if PDL:
        tl.extra.cuda.gdc_launch_dependents()
    _epilogue(y, rm, tl.program_id(0) * BLOCK_N, M, N, O, som, R, srm, POS, FREQ, KC, VC, SLOT, HQ, HKV, skh, sks,
              svh, svs, S, attn_factor, beta, L, EPI, SCALE_Q, CACHE, HEAD_D, BLOCK_M, BLOCK_N)


# ------------------------------------------------------------------------------------------------
# Programmatic dependent launch
# ------------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def pdl_api() -> bool:
    """Whether this triton has gdc_wait / gdc_launch_dependents and the launch_pdl launch option."""
    try:
        from triton.backends.nvidia.compiler import CUDAOptions
        from triton.language.extra import cuda
    except ImportError:
        return False
    return (hasattr(cuda, "gdc_wait") and hasattr(cuda, "gdc_launch_dependents")
            and "launch_pdl" in getattr(CUDAOptions, "__dataclass_fields__", {}))


def use_pdl(device, pdl: bool | None = None) -> bool:
    """Whether a launch on `device` uses PDL: asked for (`pdl`, else TRIKERN_PDL, on by default) and
    possible (CUDA sm_90+, the triton API, not the interpreter)."""
    if pdl is None:
        pdl = not autotune.switched_off("TRIKERN_PDL")
    device = torch.device(device)
    return (bool(pdl) and device.type == "cuda" and not interpreting() and pdl_api()
            and autotune.arch_of(device) >= 90)


# ------------------------------------------------------------------------------------------------
# Launch configs
# ------------------------------------------------------------------------------------------------
_EPI_BM, _EPI_BN, _EPI_WARPS = 8, 128, 4  # the split-K / unfused epilogue's tile


def config_space(M: int, fp32: bool = False) -> list[dict]:
    """quant_linear's tiles for M rows, less register-hungry where the norm prologue (an fp32 copy of
    the x tile) and the RoPE epilogue would spill (`trikern check-kernels`, sm_80 / 90 / 121): fp32
    MMA tiles take half the K tile; tiles of 64+ rows get 8 warps, and at most 64 x 128 outputs."""
    out = []
    for c in _Q.config_space(M, fp32):
        if c["DOT"] and fp32:
            c = {**c, "BLOCK_K": c["BLOCK_K"] // 2}
        elif c["DOT"] and c["BLOCK_M"] >= 64:
            c = {**c, "num_warps": 8}
            if c["BLOCK_M"] * c["BLOCK_N"] > 8192:
                c = {**c, "BLOCK_N": c["BLOCK_N"] // 2, "BLOCK_K": c["BLOCK_K"] * 2}
        if c not in out:
            out.append(c)
    return out


def fit_config(cfg: dict, K: int) -> dict:
    """`cfg` with SPLIT_K cut to the K tiles (every split gets at least one)."""
    if "TORCH" in cfg:
        return cfg
    tiles = triton.cdiv(K, cfg["BLOCK_K"])
    split = cfg["SPLIT_K"]
    while split > 1 and split > tiles:
        split //= 2
    return {**cfg, "SPLIT_K": split}


# Cached: a fused decode forward asks for these five times a layer, and the answer is a function of
# the arguments (and of the process-wide interpreter switch).
@functools.lru_cache(maxsize=None)
def _candidates(M: int, K: int, fp32: bool, cuda: bool) -> tuple[dict, ...]:
    space = config_space(M, fp32)
    if interpreting():  # the interpreter runs every candidate once: one of each kind
        space = space[:1] + [c for c in space if c["DOT"]][:1]
    fitted = []
    for c in space:
        f = fit_config(c, K)
        if f not in fitted:
            fitted.append(f)
    # The unfused path first: it is what runs when the tuner is off (TRIKERN_AUTOTUNE=0) or meets a
    # new shape inside a CUDA graph capture, so an untuned GPU runs today's path, never a slower one.
    return tuple([TORCH] + fitted if cuda else fitted)


_CONFIG_KEYS = ("BLOCK_M", "BLOCK_N", "BLOCK_K", "SPLIT_K", "DOT", "num_warps", "num_stages")


def _check_config(op, cfg, K):
    if "TORCH" in cfg:
        return
    missing = [k for k in _CONFIG_KEYS if k not in cfg]
    if missing:
        raise ValueError(f"{op}: config {cfg} lacks {', '.join(missing)}")
    if fit_config(cfg, K) != cfg:
        raise ValueError(f"{op}: config {cfg} splits K={K} into more parts than its "
                         f"{triton.cdiv(K, cfg['BLOCK_K'])} tiles of {cfg['BLOCK_K']}")
    if cfg["DOT"] and min(cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"]) < 16:
        raise ValueError(f"{op}: config {cfg}: a DOT tile needs every block >= 16")


# ------------------------------------------------------------------------------------------------
# Launcher
# ------------------------------------------------------------------------------------------------
@dataclass
class _Epi:
    """The epilogue of one call: its kind, output [M, width] and the tensors it reads or writes."""
    kind: int
    out: torch.Tensor
    residual: torch.Tensor | None = None
    rope: dict | None = None  # the ROPE epilogue's kernel arguments (norm_qkv_rope_cache_triton)

    def kwargs(self) -> dict:
        o = self.out
        kw = dict(O=o, som=o.stride(0), R=o, srm=0, POS=o, FREQ=o, KC=o, VC=o, SLOT=o, HQ=0, HKV=0, skh=0,
                  sks=0, svh=0, svs=0, S=0, attn_factor=1.0, beta=0.0, L=1, EPI=self.kind, SCALE_Q=False,
                  CACHE=False, HEAD_D=2)
        if self.residual is not None:
            kw.update(R=self.residual, srm=self.residual.stride(0))
        if self.rope is not None:
            kw.update(self.rope)
        return kw


def _partial_kwargs(P: torch.Tensor) -> dict:
    """The epilogue arguments of a PARTIAL launch: unused, the same for every op (one compile)."""
    return _Epi(PLAIN, P[0]).kwargs()


def _launch(op: str, x, W, norm_w, eps, epi: _Epi, key_extra: tuple, config, pdl, torch_path):
    """Run `op` (x [M, K] @ W [N, K].T with `epi`) with `config`, or the tuner's choice."""
    M, K = x.shape
    N = W.shape[0]
    if config is not None:
        _check_config(op, config, K)
    if M == 0 or N == 0:
        return
    if W.stride(-1) != 1:
        raise ValueError(f"{op}: W must be contiguous along K (stride {tuple(W.stride())}); convert it once at load")
    x = x if x.stride(-1) == 1 else x.contiguous()
    norm = norm_w is not None
    nw = (norm_w if norm_w.stride(0) == 1 else norm_w.contiguous()) if norm else x
    pdl = use_pdl(x.device, pdl)
    upcast = x.dtype == torch.float32 or (interpreting() and x.dtype == torch.bfloat16)
    launch = {"launch_pdl": True} if pdl else {}

    def run(cfg):
        if "TORCH" in cfg:
            torch_path()
            return
        bm, bn, bk, split = cfg["BLOCK_M"], cfg["BLOCK_N"], cfg["BLOCK_K"], cfg["SPLIT_K"]
        grid = (triton.cdiv(N, bn), triton.cdiv(M, bm), split)
        common = dict(X=x, NW=nw, W=W, M=M, N=N, K=K, sxm=x.stride(0), swn=W.stride(0), eps=float(eps),
                      split_k=split, NORM=norm, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, DOT=cfg["DOT"], UPCAST=upcast,
                      PREC="ieee" if upcast else "tf32", EVEN_K=K % bk == 0, PDL=pdl,
                      num_warps=cfg["num_warps"], num_stages=cfg["num_stages"], enable_fp_fusion=FP_FUSION, **launch)
        if split == 1:
            _fused_linear_kernel[grid](SS=x, spo=0, PARTIAL=False, **common, **epi.kwargs())
            return
        P = torch.empty(split, M, N, dtype=torch.float32, device=x.device)
        SS = torch.empty(split, M, dtype=torch.float32, device=x.device) if norm else P
        kw = _partial_kwargs(P)
        kw.update(O=P, som=N)
        _fused_linear_kernel[grid](SS=SS, spo=M * N, PARTIAL=True, **common, **kw)
        _epilogue_launch(P, SS, M, N, K, N, M * N, split, norm, eps, epi, pdl)

    if max(M * x.stride(0), M * epi.out.stride(0), max(_SPLITS) * M * N,
           M * (epi.residual.stride(0) if epi.residual is not None else 0)) >= 2 ** 31:
        config = TORCH  # the kernel's offsets (all but the weight's and the cache's) are 32-bit
    if config is None:
        configs = _candidates(M, K, x.dtype == torch.float32, x.is_cuda and not interpreting())
        key = (autotune.bucket(M, 1), N, K, autotune.dtype_key(x), pdl, *key_extra)
        config = autotune.choose(op, key, configs, run)
    run(config)


def _epilogue_launch(P, SS, M, N, K, spm, sps, split, norm, eps, epi: _Epi, pdl):
    grid = (triton.cdiv(N, _EPI_BN), triton.cdiv(M, _EPI_BM))
    _splitk_epilogue_kernel[grid](P, SS, M=M, N=N, K=K, spm=spm, sps=sps, split=split, eps=float(eps), NORM=norm,
                                  BLOCK_M=_EPI_BM, BLOCK_N=_EPI_BN, PDL=pdl, num_warps=_EPI_WARPS,
                                  enable_fp_fusion=FP_FUSION, **({"launch_pdl": True} if pdl else {}),
                                  **epi.kwargs())


def _torch_epilogue(y, epi: _Epi):
    """The unfused path's epilogue over torch's projection y [M, N] (x's dtype): no split, no norm."""
    M, N = y.shape
    _epilogue_launch(y, y, M, N, 1, y.stride(0), 0, 1, False, 0.0, epi, False)


def linear_residual_triton(x, W, residual, config=None, pdl=None):
    """residual + x @ W.T -> [M, N] in x's dtype (o_proj / down_proj with the residual add)."""
    M, N, K = _check_common("linear_residual", x, W, None, residual)
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    res = residual if residual.stride(-1) == 1 else residual.contiguous()

    def unfused():
        torch.add(res, torch.mm(x, W.T), out=out)

    _launch("linear_residual", x, W, None, 0.0, _Epi(RESIDUAL, out, res), (), config, pdl, unfused)
    return out


def norm_linear_triton(x, norm_w, eps, W, config=None, pdl=None):
    """rmsnorm(x) * norm_w @ W.T -> [M, N] in x's dtype."""
    M, N, K = _check_common("norm_linear", x, W, norm_w)
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)

    def unfused():
        torch.mm(rmsnorm_triton(x, norm_w, eps), W.T, out=out)

    _launch("norm_linear", x, W, norm_w, eps, _Epi(PLAIN, out), (), config, pdl, unfused)
    return out


def norm_gate_up_swiglu_triton(x, norm_w, eps, W_gu, config=None, pdl=None):
    """silu(h @ Wg.T) * (h @ Wu.T), h = rmsnorm(x) * norm_w, W_gu in `interleave_gate_up`'s layout
    -> [M, I] in x's dtype."""
    M, N, K = _check_common("norm_gate_up_swiglu", x, W_gu, norm_w, even_n=True)
    out = torch.empty(M, N // 2, dtype=x.dtype, device=x.device)
    epi = _Epi(SWIGLU, out)

    def unfused():
        _torch_epilogue(torch.mm(rmsnorm_triton(x, norm_w, eps), W_gu.T), epi)

    _launch("norm_gate_up_swiglu", x, W_gu, norm_w, eps, epi, (), config, pdl, unfused)
    return out


def norm_qkv_rope_cache_triton(x, norm_w, eps, W_qkv, positions, inv_freq, attn_factor=1.0, llama4_beta=None,
                               llama4_len=1, k_cache_layer=None, v_cache_layer=None, slots=None, *,
                               kv_heads=None, head_dim=None, config=None, pdl=None):
    """(q, k, v) as `norm_qkv_rope_cache_ref` returns them: views of one new [M, Hq + 2 Hkv, D]
    tensor, q and k rotated; with a cache, k and v also land in `slots` (a slot outside [0, S) is
    skipped, not an error: the caller's scratch slots are in range by construction)."""
    g = _check_qkv(x, norm_w, W_qkv, positions, inv_freq, k_cache_layer, v_cache_layer, slots, kv_heads, head_dim)
    if llama4_beta is not None and int(llama4_len) < 1:
        raise ValueError(f"norm_qkv_rope_cache: llama4_len={llama4_len} must be a positive integer")
    M = x.shape[0]
    out = torch.empty(M, g.Hq + 2 * g.Hkv, g.D, dtype=x.dtype, device=x.device)
    cache = k_cache_layer is not None
    o2 = out.view(M, -1)
    rope = dict(POS=positions.contiguous(), FREQ=inv_freq.to(torch.float32).contiguous(), HQ=g.Hq, HKV=g.Hkv,
                attn_factor=float(attn_factor), beta=float(llama4_beta or 0.0), L=int(llama4_len),
                SCALE_Q=llama4_beta is not None, CACHE=cache, HEAD_D=g.D)
    if cache:
        kc, vc = k_cache_layer, v_cache_layer
        rope.update(KC=kc, VC=vc, SLOT=slots.contiguous(), skh=kc.stride(0), sks=kc.stride(1), svh=vc.stride(0),
                    svs=vc.stride(1), S=kc.shape[1])
    epi = _Epi(ROPE, o2, rope=rope)

    def unfused():
        _torch_epilogue(torch.mm(rmsnorm_triton(x, norm_w, eps), W_qkv.T), epi)

    key = (g.Hkv, g.D, llama4_beta is not None, cache)
    _launch("norm_qkv_rope_cache", x, W_qkv, norm_w, eps, epi, key, config, pdl, unfused)
    return out[:, :g.Hq], out[:, g.Hq:g.Hq + g.Hkv], out[:, g.Hq + g.Hkv:]



# ------------------------------------------------------------------------------------------------
# `trikern check-kernels` and `trikern tune`
# ------------------------------------------------------------------------------------------------
_MAIN_CONSTEXPRS = ("NORM", "EPI", "PARTIAL", "SCALE_Q", "CACHE", "HEAD_D", "BLOCK_M", "BLOCK_N", "BLOCK_K", "DOT",
                    "UPCAST", "PREC", "EVEN_K", "PDL")
_EPI_CONSTEXPRS = ("NORM", "EPI", "SCALE_Q", "CACHE", "HEAD_D", "BLOCK_M", "BLOCK_N", "PDL")
# What the JIT specialises for contiguous NLD-sized tensors: 16-byte aligned pointers, sizes and row
# strides multiples of 16 (elements).
_ALIGNED = ("X", "NW", "W", "O", "SS", "R", "P", "KC", "VC", "N", "K", "HQ", "sxm", "swn", "som", "spo", "srm", "spm",
            "sps", "skh", "sks", "svh", "svs")
# (op, EPI, NORM) of the four ops
_OPS = (("norm_linear", PLAIN, True), ("linear_residual", RESIDUAL, False),
        ("norm_gate_up_swiglu", SWIGLU, True), ("norm_qkv_rope_cache", ROPE, True))
_NLD_HEAD_D = 128


def _epi_sig(kind: int, ptr: str) -> tuple[dict, dict]:
    """(argument types, constexprs) of the epilogue arguments, as the launchers pass them: unused
    pointers are the output's; ROPE at NLD's head_dim with the llama-4 scaling and the cache write."""
    sig = dict(O=ptr, R=ptr, POS=ptr, FREQ=ptr, KC=ptr, VC=ptr, SLOT=ptr, attn_factor="fp32", beta="fp32")
    cons = dict(EPI=kind, SCALE_Q=False, CACHE=False, HEAD_D=2)
    if kind == ROPE:
        sig.update(POS="*i64", FREQ="*fp32", SLOT="*i64")
        cons.update(SCALE_Q=True, CACHE=True, HEAD_D=_NLD_HEAD_D)
    return sig, cons


def aot_variants(arch: int):
    """Every Triton config the launchers can pick (any row count; SPLIT_K is a run-time argument) for
    each op, bf16; the split-K partial kernel (with and without the norm); fp16 for one FMA and one
    MMA tile; fp32 activations' own configs; the split-K / unfused epilogue kernel of each op. PDL on
    where the launcher turns it on (sm_90+, a triton with the API)."""
    from .aot import AotVariant

    pdl = arch >= 90 and pdl_api()
    attrs = {a: [["tt.divisibility", 16]] for a in _ALIGNED}

    def main(name, kind, norm, partial, cfg, xty="bf16"):
        ptr = f"*{xty}"
        sig = {n: "i32" for n in _fused_linear_kernel.arg_names if n not in _MAIN_CONSTEXPRS}
        esig, econs = _epi_sig(PLAIN if partial else kind, "*fp32" if partial else ptr)
        sig.update(esig, X=ptr, NW=ptr, W=ptr, SS="*fp32" if partial else ptr, eps="fp32")
        upcast = xty == "fp32"
        cons = dict(econs, NORM=norm, PARTIAL=partial, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                    BLOCK_K=cfg["BLOCK_K"], DOT=cfg["DOT"], UPCAST=upcast, PREC="ieee" if upcast else "tf32",
                    EVEN_K=True, PDL=pdl)
        tag = f"{name},{'dot' if cfg['DOT'] else 'fma'},{xty}{',pdl' if pdl else ''}"
        return AotVariant(f"fused_linear[{tag}]", _fused_linear_kernel, sig, cons, cfg,
                          attrs={a: v for a, v in attrs.items() if a in sig})

    def epilogue(name, kind, norm, pty, xty="bf16", use_pdl=pdl):
        ptr = f"*{xty}"
        sig = {n: "i32" for n in _splitk_epilogue_kernel.arg_names if n not in _EPI_CONSTEXPRS}
        esig, econs = _epi_sig(kind, ptr)
        sig.update(esig, P=f"*{pty}", SS="*fp32" if norm else f"*{pty}", eps="fp32")
        cons = dict(econs, NORM=norm, BLOCK_M=_EPI_BM, BLOCK_N=_EPI_BN, PDL=use_pdl)
        cfg = dict(BLOCK_M=_EPI_BM, BLOCK_N=_EPI_BN, num_warps=_EPI_WARPS)
        return AotVariant(f"fused_linear_epilogue[{name},{pty}->{xty}{',pdl' if use_pdl else ''}]",
                          _splitk_epilogue_kernel, sig, cons, cfg, attrs={a: v for a, v in attrs.items() if a in sig})

    out = []
    space, space32 = _Q.aot_space(space_for=config_space), _Q.aot_space(True, config_space)
    for name, kind, norm in _OPS:
        out += [main(name, kind, norm, False, c) for c in space]
    for norm in (False, True):
        out += [main("partial+norm" if norm else "partial", PLAIN, norm, True, c) for c in space]
    for name, kind, norm in _OPS:
        out += [main(name, kind, norm, False, c, "fp16") for c in (space[0], next(c for c in space if c["DOT"]))]
    for name, kind, norm in _OPS:
        out += [main(name, kind, norm, False, c, "fp32") for c in space32]
    for norm in (False, True):
        out += [main("partial+norm" if norm else "partial", PLAIN, norm, True, c, "fp32") for c in space32]
    for name, kind, norm in _OPS:
        out += [epilogue(name, kind, norm, "fp32"), epilogue(name, kind, norm, "fp32", "fp32")]
    for name, kind, _ in _OPS[2:]:  # the unfused path's epilogue over torch's bf16 projection
        out.append(epilogue(f"{name},unfused", kind, False, "bf16", use_pdl=False))
    return out


def tune_shapes(device):
    """Representative launches for `trikern tune`: one NLD-8B layer (hidden 4096, 32 q / 8 kv heads of
    128, intermediate 14336) at 1, 8, 32 and 72 rows, bf16, the cache write included."""
    H, Hq, Hkv, D, I = 4096, 32, 8, 128, 14336

    def thunk(op, M):
        def go():
            g = torch.Generator(device=device).manual_seed(0)

            def rnd(*shape, scale=1.0):
                return torch.randn(*shape, generator=g, device=device, dtype=torch.bfloat16) * scale

            x, nw = rnd(M, H), torch.ones(H, device=device, dtype=torch.bfloat16)
            if op == "norm_qkv_rope_cache":
                kc, vc = rnd(Hkv, 1024, D), rnd(Hkv, 1024, D)
                f = 1.0 / (1e6 ** (torch.arange(0, D, 2, device=device, dtype=torch.float32) / D))
                norm_qkv_rope_cache_triton(x, nw, 1e-5, rnd((Hq + 2 * Hkv) * D, H, scale=0.02),
                                           torch.arange(M, device=device), f, 1.0, 0.1, 16384, kc, vc,
                                           torch.arange(M, device=device))
            elif op == "norm_gate_up_swiglu":
                norm_gate_up_swiglu_triton(x, nw, 1e-5, rnd(2 * I, H, scale=0.02))
            elif op == "o_proj":
                linear_residual_triton(x, rnd(H, H, scale=0.02), rnd(M, H))
            else:  # down_proj
                linear_residual_triton(rnd(M, I), rnd(H, I, scale=0.02), rnd(M, H))
        return go
    ops = ("norm_qkv_rope_cache", "o_proj", "norm_gate_up_swiglu", "down_proj")
    return [(f"{op} M={M}", thunk(op, M)) for op in ops for M in (1, 8, 32, 72)]
