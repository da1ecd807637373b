"""Rotary position embedding (NeoX rotate-half) with the Llama-4 query scaling fused.

q: [T, Hq, D], k: [T, Hkv, D], positions: [T] int64 absolute positions, inv_freq: [D/2] fp32
(computed once on the host by `trikern.config.inv_freq`). `attn_factor` multiplies cos/sin (YaRN's
mscale ratio, 1 for NLD). With `llama4_beta`, q is scaled by 1 + beta * ln(1 + floor(pos / L))
after rotation (an exact no-op below L).

The Triton kernel gives each program BLOCK_T tokens x BLOCK_H heads of either q or k (the second
grid axis covers q's head blocks, then k's), computes cos/sin once per token block and shares them
across its heads. q and k may be strided views (e.g. of a projection output); the outputs are new
contiguous tensors.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION

# None spills on sm_80 / sm_90 / sm_121 (`trikern check-kernels`, triton 3.6 and 3.9).
CONFIGS = [
    {"BLOCK_T": 1, "BLOCK_H": 4, "num_warps": 2},
    {"BLOCK_T": 2, "BLOCK_H": 8, "num_warps": 4},
    {"BLOCK_T": 4, "BLOCK_H": 8, "num_warps": 4},
    {"BLOCK_T": 8, "BLOCK_H": 8, "num_warps": 4},
    {"BLOCK_T": 4, "BLOCK_H": 16, "num_warps": 8},
    {"BLOCK_T": 16, "BLOCK_H": 4, "num_warps": 8},
]


def rope_table(positions, inv_freq, attn_factor=1.0, llama4_beta=None, llama4_len=1):
    """What the reference rotates by: (cos, signed sin) [T, 1, D] fp32 -- the halves repeated, the
    first half's sin negated -- and the Llama-4 query scale [T, 1, 1] (None without it). Every layer
    of a forward rotates by the same table, so the model computes it once per forward (`table=`)."""
    ang = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]  # [T, D/2]
    cos, sin = torch.cos(ang), torch.sin(ang)
    if attn_factor != 1.0:
        cos, sin = cos * attn_factor, sin * attn_factor
    qscale = None
    if llama4_beta is not None:
        qscale = (1 + llama4_beta * torch.log1p(torch.floor(positions.to(torch.float32) / llama4_len)))[:, None, None]
    return torch.cat([cos, cos], -1)[:, None, :], torch.cat([-sin, sin], -1)[:, None, :], qscale


def rope_ref(q, k, positions, inv_freq, attn_factor=1.0, llama4_beta=None, llama4_len=1, table=None):
    """NeoX rotate-half: [x1, x2] -> [x1 cos - x2 sin, x2 cos + x1 sin], in fp32 (`table`: from
    `rope_table`, else computed here)."""
    cos, sin, qscale = table if table is not None else rope_table(positions, inv_freq, attn_factor, llama4_beta,
                                                                  llama4_len)

    Hq = q.shape[1]
    # q and k rotate as one [T, Hq + Hkv, D] tensor: half the ops of two rotations (a CPU decode
    # step is bound by per-op cost).
    x = torch.cat([q, k], 1).float()
    r = x * cos + x.roll(x.shape[-1] // 2, -1) * sin  # roll by D/2 = [x2, x1]
    if qscale is not None:
        r = torch.cat([r[:, :Hq] * qscale, r[:, Hq:]], 1)
    r = r.to(q.dtype)
    return r[:, :Hq], r[:, Hq:]


# cos / sin without libdevice. Its cosf / sinf carry a Payne-Hanek path for |x| > 105615 whose
# 28-byte table lives in local memory; triton 3.6's compiles keep it as a 32-byte stack frame in
# every rope config (3.9's happen not to), which check-kernels reports as a spill. Instead: the
# angle (the fp32 product the reference takes cos of) is reduced by pi/2 in fp64 with a two-term
# Cody-Waite constant, far more accurate than fp32 needs for any angle below 2^62, and on
# [-pi/4, pi/4] Taylor polynomials through x^9 (sin) and x^10 (cos) are within 2e-9 of the truth.
_PIO2_HI = tl.constexpr(1.5707963267948966)  # pi/2 rounded to fp64
_PIO2_LO = tl.constexpr(6.123233995736766e-17)  # pi/2 - _PIO2_HI
_TWO_OVER_PI = tl.constexpr(0.6366197723675814)


@triton.jit
def _sincos(ang):
    """(cos, sin) of an fp32 tensor, about 1 ulp from the correctly rounded values."""
    a = ang.to(tl.float64)
    k = tl.floor(a * _TWO_OVER_PI + 0.5)
    r = tl.fma(-k, _PIO2_LO, tl.fma(-k, _PIO2_HI, a)).to(tl.float32)  # in [-pi/4, pi/4]
    r2 = r * r
    sin_r = r + r * r2 * (-1.0 / 6 + r2 * (1.0 / 120 + r2 * (-1.0 / 5040 + r2 * (1.0 / 362880))))
    cos_r = 1.0 + r2 * (-0.5 + r2 * (1.0 / 24 + r2 * (-1.0 / 720 + r2 * (1.0 / 40320 + r2 * (-1.0 / 3628800)))))
    quadrant = (k.to(tl.int64) & 3).to(tl.int32)  # ang = k * pi/2 + r
    odd = (quadrant & 1) != 0
    c = tl.where(odd, sin_r, cos_r)
    s = tl.where(odd, cos_r, sin_r)
    c = tl.where(((quadrant + 1) & 2) != 0, -c, c)
    s = tl.where((quadrant & 2) != 0, -s, s)
    return c, s


@triton.jit
def _rotate(x_ptr, o_ptr, t, h, d, H, HALF, sx_t, sx_h, so_t, so_h, c, s, scale, tmask, dmask,
            SCALE: tl.constexpr):
    """Rotate one [BLOCK_T, BLOCK_H, BLOCK_D] tile of halves (x1 at d, x2 at d + HALF)."""
    m = tmask[:, None, None] & (h < H)[None, :, None] & dmask[None, None, :]
    src = x_ptr + t[:, None, None] * sx_t + h[None, :, None] * sx_h + d[None, None, :]
    x1 = tl.load(src, mask=m, other=0.0).to(tl.float32)
    x2 = tl.load(src + HALF, mask=m, other=0.0).to(tl.float32)
    c3, s3 = c[:, None, :], s[:, None, :]
    y1 = x1 * c3 - x2 * s3
    y2 = x2 * c3 + x1 * s3
    if SCALE:
        y1 = y1 * scale[:, None, None]
        y2 = y2 * scale[:, None, None]
    dst = o_ptr + t[:, None, None] * so_t + h[None, :, None] * so_h + d[None, None, :]
    tl.store(dst, y1.to(o_ptr.dtype.element_ty), mask=m)
    tl.store(dst + HALF, y2.to(o_ptr.dtype.element_ty), mask=m)


@triton.jit
def _rope_kernel(q_ptr, k_ptr, qo_ptr, ko_ptr, pos_ptr, f_ptr, T, HQ, HKV, HALF,
                 sq_t, sq_h, sk_t, sk_h, sqo_t, sqo_h, sko_t, sko_h, attn_factor, beta, L,
                 SCALE_Q: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr, BLOCK_D: tl.constexpr):
    t = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    pid_h = tl.program_id(1)
    d = tl.arange(0, BLOCK_D)
    tmask = t < T
    dmask = d < HALF
    pos = tl.load(pos_ptr + t, mask=tmask, other=0)
    f = tl.load(f_ptr + d, mask=dmask, other=0.0)
    ang = pos.to(tl.float32)[:, None] * f[None, :]  # the same fp32 product the reference takes cos of
    c, s = _sincos(ang)
    c = c * attn_factor
    s = s * attn_factor
    scale = tl.full([BLOCK_T], 1.0, tl.float32)
    if SCALE_Q:
        # integer floor(pos / L): exact where an fp32 quotient could round up to the next integer
        scale = 1.0 + beta * tl.log(1.0 + (pos // L).to(tl.float32))
    n_qb = tl.cdiv(HQ, BLOCK_H)
    if pid_h < n_qb:
        h = pid_h * BLOCK_H + tl.arange(0, BLOCK_H)
        _rotate(q_ptr, qo_ptr, t, h, d, HQ, HALF, sq_t, sq_h, sqo_t, sqo_h, c, s, scale, tmask, dmask,
                SCALE_Q)
    else:
        h = (pid_h - n_qb) * BLOCK_H + tl.arange(0, BLOCK_H)
        _rotate(k_ptr, ko_ptr, t, h, d, HKV, HALF, sk_t, sk_h, sko_t, sko_h, c, s, scale, tmask, dmask,
                False)


def _check(q, k, positions, inv_freq):
    for name, x in (("q", q), ("k", k)):
        if x.dim() != 3:
            raise ValueError(f"rope: {name} must be [T, H, D]; got {tuple(x.shape)}")
        if x.dtype not in autotune.FLOAT_DTYPES:
            raise TypeError(f"rope: {name} has dtype {x.dtype}; expected float32, float16 or bfloat16")
    T, _, D = q.shape
    if k.shape[0] != T or k.shape[2] != D:
        raise ValueError(f"rope: k {tuple(k.shape)} does not match q {tuple(q.shape)} in T or head_dim")
    if D % 2:
        raise ValueError(f"rope: head_dim {D} must be even")
    if positions.dim() != 1 or positions.shape[0] != T or positions.dtype not in (torch.int64, torch.int32):
        raise ValueError(f"rope: positions ({tuple(positions.shape)}, {positions.dtype}) must be [{T}] int64")
    if inv_freq.dim() != 1 or inv_freq.shape[0] != D // 2:
        raise ValueError(f"rope: inv_freq {tuple(inv_freq.shape)} must be [{D // 2}] (head_dim / 2)")
    for name, x in (("k", k), ("positions", positions), ("inv_freq", inv_freq)):
        if x.device != q.device:
            raise ValueError(f"rope: {name} is on {x.device}, q on {q.device}")


def rope_triton(q, k, positions, inv_freq, attn_factor=1.0, llama4_beta=None, llama4_len=1, config=None):
    """Triton launcher; `config` forces one launch config (tests), else autotune chooses."""
    _check(q, k, positions, inv_freq)
    T, Hq, D = q.shape
    Hkv = k.shape[1]
    qo, ko = torch.empty(q.shape, dtype=q.dtype, device=q.device), torch.empty(k.shape, dtype=k.dtype, device=k.device)
    if T == 0 or Hq == 0:
        return qo, ko
    if llama4_beta is not None and int(llama4_len) < 1:
        raise ValueError(f"rope: llama4_len={llama4_len} must be a positive integer")
    q = q if q.stride(2) == 1 else q.contiguous()
    k = k if k.stride(2) == 1 else k.contiguous()
    positions = positions.contiguous()
    f = inv_freq.to(torch.float32).contiguous()
    half = D // 2
    scale_q = llama4_beta is not None

    def run(cfg):
        bh = cfg["BLOCK_H"]
        grid = (triton.cdiv(T, cfg["BLOCK_T"]), triton.cdiv(Hq, bh) + triton.cdiv(Hkv, bh))
        _rope_kernel[grid](q, k, qo, ko, positions, f, T, Hq, Hkv, half,
                           q.stride(0), q.stride(1), k.stride(0), k.stride(1),
                           qo.stride(0), qo.stride(1), ko.stride(0), ko.stride(1),
                           float(attn_factor), float(llama4_beta or 0.0), int(llama4_len),
                           SCALE_Q=scale_q, BLOCK_D=triton.next_power_of_2(half),
                           enable_fp_fusion=FP_FUSION, **cfg)

    if config is None:
        key = (autotune.bucket(T), Hq, Hkv, D, autotune.dtype_key(q), scale_q)
        config = autotune.choose("rope", key, CONFIGS, run)
    run(config)
    return qo, ko


def tune_shapes(device):
    """Representative launches for `trikern tune`: NLD heads (32 q / 8 kv, head_dim 128)."""
    def thunk(T):
        def go():
            q = torch.randn(T, 32, 128, device=device, dtype=torch.bfloat16)
            k = torch.randn(T, 8, 128, device=device, dtype=torch.bfloat16)
            pos = torch.arange(T, device=device)
            f = 1.0 / (1e6 ** (torch.arange(0, 128, 2, device=device, dtype=torch.float32) / 128))
            rope_triton(q, k, pos, f, 1.0, 0.1, 16384)
        return go
    return [(f"T={T} Hq=32 Hkv=8 D=128", thunk(T)) for T in (1, 16, 64, 512, 4096)]


# What the JIT specialises at NLD sizes (32 q / 8 kv heads of 128, llama-4 length 8192 or 16384):
# 16-byte aligned pointers, and these i32 arguments divisible by 16, so the compile is the real one.
_ALIGNED = ("q_ptr", "k_ptr", "qo_ptr", "ko_ptr", "pos_ptr", "f_ptr", "HQ", "HALF", "sq_t", "sq_h", "sk_t",
            "sk_h", "sqo_t", "sqo_h", "sko_t", "sko_h", "L")


def aot_variants(arch: int):
    """Every config at head_dim 128, bf16, with the llama-4 query scaling on."""
    from .aot import AotVariant
    sig = {"q_ptr": "*bf16", "k_ptr": "*bf16", "qo_ptr": "*bf16", "ko_ptr": "*bf16", "pos_ptr": "*i64",
           "f_ptr": "*fp32", "T": "i32", "HQ": "i32", "HKV": "i32", "HALF": "i32",
           "sq_t": "i32", "sq_h": "i32", "sk_t": "i32", "sk_h": "i32", "sqo_t": "i32", "sqo_h": "i32",
           "sko_t": "i32", "sko_h": "i32", "attn_factor": "fp32", "beta": "fp32", "L": "i32"}
    return [AotVariant("rope", _rope_kernel, sig,
                       {"SCALE_Q": True, "BLOCK_T": c["BLOCK_T"], "BLOCK_H": c["BLOCK_H"], "BLOCK_D": 64}, c,
                       attrs={a: [["tt.divisibility", 16]] for a in _ALIGNED})
            for c in CONFIGS]
