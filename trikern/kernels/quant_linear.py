"""Weight-only quantized linear: y = x @ W.T with W = dequantize(w) for an int4 (group-wise) or fp8
(per-output-channel) weight in the layouts of qweight.py. Activations stay in their dtype (bf16,
fp16 or fp32); products are summed in fp32 and rounded once to x's dtype.

`quant_linear_ref` is the spec: dequantize in fp32, matmul in fp32, one rounding.

The Triton kernel is a dequant-fused skinny GEMM for decoding's row counts (1 .. ~80 rows): one
program per (tile of N outputs, tile of rows, K split). Each K step loads a tile of the weight in its
stored form (int4: [BLOCK_N, BLOCK_K / 8] int32 words; fp8: [BLOCK_N, BLOCK_K] bytes), widens it in
registers to the activations' dtype and multiplies. The scales are applied to
the fp32 partial products, never to the weight: a K tile never crosses an int4 group (BLOCK_K divides
the group), so `(q - zero)` -- an integer in [-15, 15] -- and fp8's values are exact in fp16 and bf16
and the tile's product is `scale * (x . (q - zero))` exactly as the reference has it, up to summation
order. fp8 -> fp16 is a bit move (`_fp8_to_f16`) valid on every arch (sm_80 has no fp8 instructions),
its factor 2^-8 folded into the per-channel scale.

Two inner products, by config:
- DOT: `tl.dot(w_tile [BLOCK_N, BLOCK_K], x_tile.T [BLOCK_K, BLOCK_M])` -- the weight is the MMA's
  wide operand, fed from registers where it was dequantized (sm_90: wgmma m64nXk16 with A in
  registers), and the few rows its narrow one (at least 16: fewer rows are padded), so tensor cores
  run even for one row. fp32 activations use IEEE fp32 products (no tf32) and small tiles of their own;
- FMA: a broadcast multiply-add into a [BLOCK_M, BLOCK_N, BLOCK_K] fp32 accumulator reduced once at the
  end (BLOCK_M 1 or 2: the AR step's single row, without padding).
SPLIT_K > 1 splits K over programs (narrow N: too few output tiles to fill the GPU); each writes an
fp32 partial and `_splitk_sum_kernel` adds them in a fixed order (deterministic, no atomics). It is a
run-time argument of the kernel, so one compile serves every split.

Launch configs come from `trikern.kernels.autotune`: on CUDA the candidates also include torch's
own path (`TORCH`: dequantize to x's dtype, then a cuBLAS matmul), so the tuner picks by measurement and
the op is never slower than plain torch. (torch's `_weight_int4pack_mm` needs its own tiled layout,
a second copy of every weight converted on the GPU, and takes bf16 only, and `_scaled_mm` multiplies
fp8 by fp8 -- activations would be quantized; neither is a candidate.) `aot_variants` feeds
`trikern check-kernels`, `tune_shapes` feeds `trikern tune`.
"""
from __future__ import annotations

import functools

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION, interpreting
from .qweight import Fp8Weight, QuantWeight, check_weight, dequantize

INT4, FP8 = 0, 1
_DTYPES = (torch.float32, torch.float16, torch.bfloat16)


def quant_linear_ref(x: torch.Tensor, w: QuantWeight) -> torch.Tensor:
    """x [..., K] @ W.T -> [..., N] in x's dtype, W = dequantize(w) (fp32 math)."""
    _check(x, w)
    return (x.float() @ dequantize(w).T).to(x.dtype)


def _check(x: torch.Tensor, w: QuantWeight) -> tuple[int, int]:
    """(N, K) of a valid call; one clear error otherwise."""
    N, K = check_weight(w, "quant_linear")
    if not torch.is_tensor(x):
        raise TypeError(f"quant_linear: x is {type(x).__name__}; expected a tensor")
    if x.dtype not in _DTYPES:
        raise TypeError(f"quant_linear: x has dtype {x.dtype}; expected float32, float16 or bfloat16")
    if x.dim() < 1 or x.shape[-1] != K:
        raise ValueError(f"quant_linear: x has shape {tuple(x.shape)}; its last dim must be the weight's "
                         f"K={K} (weight [N={N}, K={K}])")
    dev = (w.weight if isinstance(w, Fp8Weight) else w.packed).device
    if x.device != dev:
        raise ValueError(f"quant_linear: x is on {x.device}, the weight on {dev}")
    return N, K


# ------------------------------------------------------------------------------------------------
# Kernels
# ------------------------------------------------------------------------------------------------
@triton.jit
def _fp8_to_f16(b):
    """float8_e4m3fn bytes (uint8) -> fp16 equal to their value / 256, exactly, subnormals included:
    e4m3's exponent and mantissa bits placed in fp16's (bias 7 against 15: a factor 2^-8)."""
    b16 = b.to(tl.int16)
    bits = ((b16 & 0x7F) << 7) | ((b16 & 0x80) << 8)
    return bits.to(tl.float16, bitcast=True)


@triton.jit
def _int4_tile(w_rows, nmask, kw, BLOCK_K: tl.constexpr):
    """[BLOCK_N, BLOCK_K] int32 nibbles 0..15 of the packed words kw .. kw + BLOCK_K / 8 of the rows
    `w_rows` points at: column 8c + j of the tile is nibble j of word c (qweight's order)."""
    rw = kw + tl.arange(0, BLOCK_K // 8)
    words = tl.load(w_rows[:, None] + rw[None, :], mask=nmask[:, None], other=0)
    # nibble j of every word, placed so the reshape keeps them in-thread: the joins build a trailing
    # [2, 2, 2] whose index (a, b, c) holds nibble 4a + 2b + c.
    q0, q1, q2, q3 = words & 0xF, (words >> 4) & 0xF, (words >> 8) & 0xF, (words >> 12) & 0xF
    q4, q5, q6, q7 = (words >> 16) & 0xF, (words >> 20) & 0xF, (words >> 24) & 0xF, (words >> 28) & 0xF
    t = tl.join(tl.join(tl.join(q0, q4), tl.join(q2, q6)), tl.join(tl.join(q1, q5), tl.join(q3, q7)))
    return tl.reshape(t, [w_rows.shape[0], BLOCK_K])


@triton.jit
def _qlinear_kernel(X, W, S, Z, O, M, N, K, sxm, swn, ssn, szn, som, spo, split_k,
                    FMT: tl.constexpr, HAS_ZEROS: tl.constexpr, GROUP: tl.constexpr,
                    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
                    DOT: tl.constexpr, UPCAST: tl.constexpr, PREC: tl.constexpr, EVEN_K: tl.constexpr):
    pid_n, pid_m, pid_k = tl.program_id(0), tl.program_id(1), tl.program_id(2)
    rn = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
    rm = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    rk = tl.arange(0, BLOCK_K)
    mmask = rm < M
    # the dtype the weight tile is widened to: x's, or fp32 (fp32 activations; the interpreter's bf16
    # tl.dot is wrong, so it multiplies bf16 in fp32 -- the products are exact either way)
    CT: tl.constexpr = tl.float32 if UPCAST else X.dtype.element_ty
    if DOT:
        acc = tl.zeros([BLOCK_N, BLOCK_M], dtype=tl.float32)
    else:
        acc3 = tl.zeros([BLOCK_M, BLOCK_N, BLOCK_K], dtype=tl.float32)
    n_tiles = tl.cdiv(K, BLOCK_K)
    nmask = rn < N
    # 32-bit offsets everywhere but the weight (the launcher checks they fit): fewer 64-bit registers
    x_rows = X + rm * sxm
    w_rows = W + rn.to(tl.int64) * swn
    for t in range(pid_k, n_tiles, split_k):
        k0 = t * BLOCK_K
        if EVEN_K:
            xm = mmask[:, None]
        else:
            xm = mmask[:, None] & (k0 + rk < K)[None, :]
        if DOT:  # loaded as x.T [BLOCK_K, BLOCK_M], the MMA's narrow operand
            x = tl.load(x_rows[None, :] + (k0 + rk)[:, None], mask=tl.trans(xm), other=0.0).to(CT)
        else:
            x = tl.load(x_rows[:, None] + (k0 + rk)[None, :], mask=xm, other=0.0).to(CT)
        if FMT == 0:
            q = _int4_tile(w_rows, nmask, k0 // 8, BLOCK_K)
            g = k0 // GROUP
            s = tl.load(S + rn * ssn + g, mask=nmask, other=0.0).to(tl.float32)
            if HAS_ZEROS:
                z = tl.load(Z + rn * szn + g, mask=nmask, other=0).to(tl.int32)
                wt = (q - z[:, None]).to(CT)
            else:
                wt = (q - 8).to(CT)
        else:
            wm = nmask[:, None]
            if not EVEN_K:
                wm = wm & (k0 + rk < K)[None, :]
            b = tl.load(w_rows[:, None] + (k0 + rk)[None, :], mask=wm, other=0)
            wt = _fp8_to_f16(b).to(CT)
        if DOT:
            part = tl.dot(wt, x, input_precision=PREC)
            if FMT == 0:
                acc += part * s[:, None]
            else:
                acc += part
        else:
            if FMT == 0:
                wf = wt.to(tl.float32) * s[:, None]
            else:
                wf = wt.to(tl.float32)
            acc3 += x.to(tl.float32)[:, None, :] * wf[None, :, :]
    if FMT == 1:  # the per-channel scale, times the 2^8 _fp8_to_f16 took out
        sc = tl.load(S + rn, mask=nmask, other=0.0).to(tl.float32) * 256.0
    O += pid_k * spo
    if DOT:  # acc is out.T [BLOCK_N, BLOCK_M]
        if FMT == 1:
            acc = acc * sc[:, None]
        tl.store(O + rm[None, :] * som + rn[:, None], acc.to(O.dtype.element_ty),
                 mask=nmask[:, None] & mmask[None, :])
    else:
        out = tl.sum(acc3, axis=2)
        if FMT == 1:
            out = out * sc[None, :]
        tl.store(O + rm[:, None] * som + rn[None, :], out.to(O.dtype.element_ty),
                 mask=mmask[:, None] & nmask[None, :])


@triton.jit
def _splitk_sum_kernel(P, O, MN, SPLIT_K: tl.constexpr, BLOCK: tl.constexpr):
    """O = sum over s of P[s] in the order s = 0, 1, ... (P contiguous [SPLIT_K, M, N] fp32, O
    contiguous [M, N])."""
    i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = i < MN
    acc = tl.zeros([BLOCK], dtype=tl.float32)
    for s in tl.static_range(SPLIT_K):
        acc += tl.load(P + s * MN + i, mask=mask, other=0.0)
    tl.store(O + i, acc.to(O.dtype.element_ty), mask=mask)


# ------------------------------------------------------------------------------------------------
# Launch configs
# ------------------------------------------------------------------------------------------------
TORCH = {"TORCH": 1}  # the candidate that dequantizes to x's dtype and calls F.linear
_SPLITS = (1, 2, 4)  # every SPLIT_K config_space uses


def _cfg(bm, bn, bk, split, dot, warps, stages):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split, "DOT": dot,
            "num_warps": warps, "num_stages": stages}


def _pow2_at_least(n: int) -> int:
    return 1 << max(int(n) - 1, 0).bit_length()


def _max_block_k(fmt: int, group: int) -> int:
    """The largest K tile that never crosses an int4 group: the largest power of two dividing it."""
    return 1 << 30 if fmt == FP8 else group & -group


def _fma_space(bm: int) -> list[dict]:
    # BLOCK_M * BLOCK_N * BLOCK_K <= 8192: the fp32 accumulator is 64 registers a thread at 4 warps;
    # the 64-output tile of one row takes 8 (triton 3.6's ptxas spilled its int4 dequant at 4).
    return [_cfg(bm, bn, 128, split, 0, 8 if bm * bn >= 64 else 4, 3)
            for bn, split in ((32, 1), (32, 4), (64 // bm, 2))]


def _dot_space(bm: int, fp32: bool) -> list[dict]:
    warps = 8 if bm >= 128 else 4
    # fp32 activations multiply in IEEE fp32 (no tensor cores): its register-hungry tiles stay small
    tiles = ((64, 64), (32, 128)) if fp32 else ((64, 128), (128, 64))
    return [_cfg(bm, bn, bk, split, 1, warps, 3) for bn, bk in tiles for split in (1, 4)]


def config_space(M: int, fp32: bool = False) -> list[dict]:
    """Every Triton config for M rows (before `fit_config` fits BLOCK_K to the group): the FMA tile
    for one or two rows; MMA tiles of one row block (padded to 16) and of half of it (fp32: of 16)."""
    bm = min(_pow2_at_least(M), 128)
    space = _fma_space(bm) if bm <= 2 else []
    blocks = {16} if fp32 else {max(16, bm), max(16, bm // 2)}
    for b in sorted(blocks, reverse=True):
        space += _dot_space(b, fp32)
    return space


def fit_config(cfg: dict, fmt: int, group: int, K: int) -> dict | None:
    """`cfg` with BLOCK_K cut to fit the int4 group and SPLIT_K to the K tiles, or None when the
    group leaves no K tile a tl.dot / the FMA loop can use (a group of 8, 24, ...)."""
    if "TORCH" in cfg:
        return cfg
    bk = min(cfg["BLOCK_K"], _max_block_k(fmt, group))
    if bk < 16:
        return None
    tiles = triton.cdiv(K, bk)
    split = cfg["SPLIT_K"]
    while split > 1 and split > tiles:
        split //= 2
    return {**cfg, "BLOCK_K": bk, "SPLIT_K": split}


@functools.lru_cache(maxsize=None)  # asked for at every launch (each layer linear of a forward)
def _candidates(M: int, fmt: int, group: int, K: int, fp32: bool, cuda: bool) -> tuple[dict, ...]:
    space = config_space(M, fp32)
    if interpreting():  # the interpreter runs every candidate once: one of each kind
        space = space[:1] + [c for c in space if c["DOT"]][:1]
    fitted = []
    for c in space:
        f = fit_config(c, fmt, group, K)
        if f is not None and f not in fitted:
            fitted.append(f)
    return tuple(fitted + [TORCH] if cuda else fitted or [TORCH])


# ------------------------------------------------------------------------------------------------
# Launcher
# ------------------------------------------------------------------------------------------------
def _weight_args(w: QuantWeight):
    """(fmt, W, S, Z, sw, ss, sz, has_zeros, group): the kernel's view of a weight; row strides in
    elements, every last dim unit-stride (copied if not: a checkpoint's views are contiguous)."""
    def unit(t):
        return t if t.stride(-1) == 1 else t.contiguous()

    if isinstance(w, Fp8Weight):
        W = unit(w.weight).view(torch.uint8)  # the kernel converts the bits itself (_fp8_to_f16)
        return FP8, W, w.scale, W, W.stride(0), 1, 0, False, 0
    W, S = unit(w.packed), unit(w.scales)
    Z = unit(w.zeros) if w.zeros is not None else W
    return INT4, W, S, Z, W.stride(0), S.stride(0), Z.stride(0), w.zeros is not None, w.group


def quant_linear_triton(x: torch.Tensor, w: QuantWeight, config: dict | None = None) -> torch.Tensor:
    """The Triton launcher behind `quant_linear` (x [..., K], w [N, K] -> [..., N] in x's dtype).
    `config` pins a launch config (tests); otherwise autotune chooses, per shape bucket."""
    N, K = _check(x, w)
    lead = x.shape[:-1]
    x2 = x.reshape(-1, K)
    if x2.stride(-1) != 1:
        x2 = x2.contiguous()
    M = x2.shape[0]
    out = torch.empty(M, N, dtype=x.dtype, device=x.device)
    if M == 0 or N == 0:
        return out.view(*lead, N)
    if K == 0:
        return out.zero_().view(*lead, N)
    fmt, W, S, Z, sw, ss, sz, has_zeros, group = _weight_args(w)
    upcast = x.dtype == torch.float32 or (interpreting() and x.dtype == torch.bfloat16)

    def run(cfg):
        if "TORCH" in cfg:
            torch.mm(x2, dequantize(w, x.dtype).T, out=out)
            return
        split, bm, bn = cfg["SPLIT_K"], cfg["BLOCK_M"], cfg["BLOCK_N"]
        if split > 1:
            dst = torch.empty(split, M, N, dtype=torch.float32, device=x.device)
            som, spo = N, M * N
        else:
            dst, som, spo = out, out.stride(0), 0
        grid = (triton.cdiv(N, bn), triton.cdiv(M, bm), split)
        _qlinear_kernel[grid](
            x2, W, S, Z, dst, M, N, K, x2.stride(0), sw, ss, sz, som, spo, split,
            FMT=fmt, HAS_ZEROS=has_zeros, GROUP=max(group, 1), BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=cfg["BLOCK_K"],
            DOT=cfg["DOT"], UPCAST=upcast, PREC="ieee" if upcast else "tf32",
            EVEN_K=K % cfg["BLOCK_K"] == 0, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
            enable_fp_fusion=FP_FUSION)
        if split > 1:
            _splitk_sum_kernel[(triton.cdiv(M * N, _SUM_BLOCK),)](
                dst, out, M * N, SPLIT_K=split, BLOCK=_SUM_BLOCK, num_warps=4, enable_fp_fusion=FP_FUSION)

    if max(M * x2.stride(0), N * ss, N * sz, max(_SPLITS) * M * N) >= 2 ** 31:
        config = TORCH  # the kernel's offsets (all but the weight's) are 32-bit
    if config is None:
        configs = _candidates(M, fmt, group, K, x.dtype == torch.float32, x.is_cuda and not interpreting())
        key = (autotune.bucket(M, 1), N, K, "fp8" if fmt == FP8 else f"int4g{group}{'z' if has_zeros else ''}",
               autotune.dtype_key(x))
        config = autotune.choose("quant_linear", key, configs, run)
    elif "TORCH" not in config:
        fitted = fit_config(config, fmt, group, K)
        if fitted != config:
            raise ValueError(f"quant_linear: config {config} does not fit this weight (group={group}, K={K}); "
                             f"fit_config gives {fitted}")
    run(config)
    return out.view(*lead, N)


_SUM_BLOCK = 1024


# ------------------------------------------------------------------------------------------------
# `trikern check-kernels` and `trikern tune`
# ------------------------------------------------------------------------------------------------
_KERNEL_CONSTEXPRS = ("FMT", "HAS_ZEROS", "GROUP", "BLOCK_M", "BLOCK_N", "BLOCK_K", "DOT", "UPCAST", "PREC",
                      "EVEN_K")
# What the JIT specialises for contiguous NLD-sized weights: 16-byte aligned pointers, K and the row
# strides multiples of 16 (elements).
_ALIGNED = ("X", "W", "S", "Z", "O", "K", "sxm", "swn", "som", "spo")


def _aot_formats():
    """(tag, FMT, HAS_ZEROS, GROUP, weight and scale pointer types) of the formats checked."""
    return [("int4g128", INT4, False, 128, "*i32", "*bf16"), ("int4g32z", INT4, True, 32, "*i32", "*bf16"),
            ("fp8", FP8, False, 0, "*u8", "*fp32")]


def aot_space(fp32: bool = False, space_for=None) -> list[dict]:
    """The Triton configs of every row bucket a launcher sees (1 .. 128 rows) in `space_for(M, fp32)`
    (default: this module's `config_space`; fused_linear passes its own), SPLIT_K dropped: it is a
    run-time argument, so one compile serves every split."""
    space = []
    for M in (1, 2, 4, 8, 16, 32, 64, 128):
        for c in (space_for or config_space)(M, fp32):
            c = {k: v for k, v in c.items() if k != "SPLIT_K"}
            if c not in space:
                space.append(c)
    return space


def aot_variants(arch: int):
    """Every Triton config the launcher can pick (any row count, any split), bf16 activations, for
    int4 group 128 symmetric, int4 group 32 with zero points (BLOCK_K cut to 32) and fp8; fp32
    activations' own configs (int4 group 128); fp16 for one FMA and one MMA tile (the bf16 code
    with another element type); the split-K sum for every split."""
    from .aot import AotVariant

    def variant(tag, fmt, zeros, group, wty, sty, cfg, xty="bf16", upcast=False):
        sig = {name: "i32" for name in _qlinear_kernel.arg_names if name not in _KERNEL_CONSTEXPRS}
        sig.update(X=f"*{xty}", W=wty, S=sty, Z="*u8" if zeros else wty, O=f"*{xty}")
        cons = dict(FMT=fmt, HAS_ZEROS=zeros, GROUP=max(group, 1), BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
                    BLOCK_K=cfg["BLOCK_K"], DOT=cfg["DOT"], UPCAST=upcast, PREC="ieee" if upcast else "tf32",
                    EVEN_K=True)
        kind = "dot" if cfg["DOT"] else "fma"
        return AotVariant(f"quant_linear[{tag},{kind},{xty}]", _qlinear_kernel, sig, cons, cfg,
                          attrs={a: [["tt.divisibility", 16]] for a in _ALIGNED})

    out = []
    for tag, fmt, zeros, group, wty, sty in _aot_formats():
        seen = []
        for c in aot_space():
            cfg = fit_config({**c, "SPLIT_K": 1}, fmt, group, 4096)
            cfg.pop("SPLIT_K")
            if cfg not in seen:
                seen.append(cfg)
                out.append(variant(tag, fmt, zeros, group, wty, sty, cfg))
    space = aot_space()
    for c in (space[0], next(c for c in space if c["DOT"])):
        out.append(variant("int4g128", INT4, False, 128, "*i32", "*fp16", c, xty="fp16"))
    for c in aot_space(fp32=True):
        out.append(variant("int4g128", INT4, False, 128, "*i32", "*fp32", c, xty="fp32", upcast=True))
    sig = {"P": "*fp32", "O": "*bf16", "MN": "i32"}
    for split in _SPLITS[1:]:
        out.append(AotVariant("quant_linear_splitk_sum", _splitk_sum_kernel, sig,
                              dict(SPLIT_K=split, BLOCK=_SUM_BLOCK), dict(num_warps=4, SPLIT_K=split),
                              attrs={a: [["tt.divisibility", 16]] for a in ("P", "O", "MN")}))
    return out


def tune_shapes(device):
    """Representative launches for `trikern tune`: NLD-8B-like projections (hidden 4096, intermediate
    14336, fused qkv 6144, gate_up 28672), int4 group 128 and fp8, at 1, 8 and 72 rows, bf16."""
    from .qweight import quantize_fp8, quantize_int4

    def thunk(M, N, K, fmt):
        def go():
            g = torch.Generator(device=device).manual_seed(0)
            Wd = torch.randn(N, K, generator=g, device=device, dtype=torch.bfloat16) * 0.02
            w = quantize_fp8(Wd) if fmt == "fp8" else quantize_int4(Wd, 128)
            x = torch.randn(M, K, generator=g, device=device, dtype=torch.bfloat16)
            quant_linear_triton(x, w)
        return go
    shapes = [(6144, 4096), (4096, 4096), (28672, 4096), (4096, 14336)]
    return [(f"M={M} N={N} K={K} {fmt}", thunk(M, N, K, fmt))
            for fmt in ("int4", "fp8") for N, K in shapes for M in (1, 8, 72)]
