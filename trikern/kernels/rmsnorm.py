"""RMSNorm, and RMSNorm with the residual add fused.

Math in fp32, cast back to the input dtype before the weight multiply (the NLD / Llama rule).
`rmsnorm(x, weight, eps)` returns norm(x) * weight. `add_rmsnorm(x, residual, weight, eps)` computes
h = x + residual first and returns (norm(h) * weight, h), so the decoder layer carries the residual
stream without a separate add. Both run the same kernel (HAS_RES selects the add).

The Triton kernel keeps whole rows in registers (BLOCK_T rows x next_pow2(H) columns per program):
hidden sizes are at most a few thousand, so one pass over the row is enough.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION
from .layout import unit_rows

MAX_HIDDEN = 65536
# Candidate launch configs; `configs_for` drops the ones that would hold too many row elements per thread.
CONFIGS = [
    {"BLOCK_T": 1, "num_warps": 4},
    {"BLOCK_T": 1, "num_warps": 8},
    {"BLOCK_T": 2, "num_warps": 8},
    {"BLOCK_T": 4, "num_warps": 8},
    {"BLOCK_T": 4, "num_warps": 16},
]
_MAX_PER_THREAD = 64  # fp32 row elements one thread holds before register pressure spills


def rmsnorm_ref(x, weight, eps):
    """x * rsqrt(mean(x^2) + eps) in fp32, rounded to x's dtype, then times the weight."""
    xf = x.float()
    return (xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight


def add_rmsnorm_ref(x, residual, weight, eps):
    h = x + residual
    return rmsnorm_ref(h, weight, eps), h


@triton.jit
def _rmsnorm_kernel(x_ptr, r_ptr, w_ptr, y_ptr, h_ptr, N, H, sx, sr, sy, sh, eps,
                    HAS_RES: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_H: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_T + tl.arange(0, BLOCK_T)
    cols = tl.arange(0, BLOCK_H)
    cmask = cols < H
    m = (rows < N)[:, None] & cmask[None, :]
    x = tl.load(x_ptr + rows[:, None] * sx + cols[None, :], mask=m, other=0.0)
    if HAS_RES:
        r = tl.load(r_ptr + rows[:, None] * sr + cols[None, :], mask=m, other=0.0)
        # one rounding of the exact sum, as torch's x + residual does
        x = (x.to(tl.float32) + r.to(tl.float32)).to(h_ptr.dtype.element_ty)
        tl.store(h_ptr + rows[:, None] * sh + cols[None, :], x, mask=m)
    xf = x.to(tl.float32)
    inv = tl.rsqrt(tl.sum(xf * xf, axis=1) / H + eps)
    y = (xf * inv[:, None]).to(x_ptr.dtype.element_ty)  # cast before the weight, like the reference
    w = tl.load(w_ptr + cols, mask=cmask, other=0.0)
    out = (y.to(tl.float32) * w.to(tl.float32)[None, :]).to(y_ptr.dtype.element_ty)
    tl.store(y_ptr + rows[:, None] * sy + cols[None, :], out, mask=m)


def block_h(H: int) -> int:
    return triton.next_power_of_2(max(H, 16))


def configs_for(H: int) -> list[dict]:
    """The config space for hidden size H (configs whose rows fit in registers; never empty)."""
    bh = block_h(H)
    fit = [c for c in CONFIGS if c["BLOCK_T"] * bh <= _MAX_PER_THREAD * 32 * c["num_warps"]]
    return fit or [max(CONFIGS, key=lambda c: (c["num_warps"], -c["BLOCK_T"]))]


def _check(op, x, weight, residual):
    if x.dtype not in autotune.FLOAT_DTYPES:
        raise TypeError(f"{op}: x has dtype {x.dtype}; expected float32, float16 or bfloat16")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"{op}: x {tuple(x.shape)} needs a non-empty last (hidden) dimension")
    H = x.shape[-1]
    if H > MAX_HIDDEN:
        raise ValueError(f"{op}: hidden size {H} exceeds the kernel's {MAX_HIDDEN}")
    if weight.dim() != 1 or weight.shape[0] != H:
        raise ValueError(f"{op}: weight {tuple(weight.shape)} must be [{H}] to match x {tuple(x.shape)}")
    if weight.dtype not in autotune.FLOAT_DTYPES or weight.device != x.device:
        raise TypeError(f"{op}: weight ({weight.dtype}, {weight.device}) must be a float tensor on {x.device}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or residual.device != x.device):
        raise ValueError(f"{op}: residual ({tuple(residual.shape)}, {residual.dtype}, {residual.device}) "
                         f"must match x ({tuple(x.shape)}, {x.dtype}, {x.device})")


def rmsnorm_triton(x, weight, eps, config=None):
    """Triton launcher of `rmsnorm`; `config` forces one launch config (tests), else autotune chooses."""
    return _launch("rmsnorm", x, None, weight, eps, config)[0]


def add_rmsnorm_triton(x, residual, weight, eps, config=None):
    """Triton launcher of `add_rmsnorm`; `config` as in rmsnorm_triton."""
    if residual is None:
        raise ValueError("add_rmsnorm: residual is None (use rmsnorm for a plain norm)")
    return _launch("add_rmsnorm", x, residual, weight, eps, config)


def _launch(op, x, residual, weight, eps, config):
    """(y, h): h = x + residual when residual is given, else x itself (nothing extra is written)."""
    _check(op, x, weight, residual)
    H = x.shape[-1]
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    h = torch.empty_like(x) if residual is not None else x
    N = x.numel() // H
    if N == 0:
        return y, h
    x2 = unit_rows(x, H)
    r2 = unit_rows(residual, H) if residual is not None else x2
    y2 = y.view(N, H)
    h2 = h.view(N, H) if residual is not None else y2  # unwritten without HAS_RES: any valid pointer
    w = weight if weight.stride(0) == 1 else weight.contiguous()

    def run(cfg):
        grid = (triton.cdiv(N, cfg["BLOCK_T"]),)
        _rmsnorm_kernel[grid](x2, r2, w, y2, h2, N, H, x2.stride(0), r2.stride(0), y2.stride(0),
                              h2.stride(0), float(eps), HAS_RES=residual is not None,
                              BLOCK_H=block_h(H), enable_fp_fusion=FP_FUSION, **cfg)

    if config is None:
        key = (autotune.bucket(N), H, autotune.dtype_key(x), autotune.dtype_key(weight), residual is not None)
        config = autotune.choose("rmsnorm", key, configs_for(H), run)
    run(config)
    return y, h


def tune_shapes(device):
    """Representative launches for `trikern tune`: NLD hidden sizes, decode to prefill row counts."""
    def thunk(N, H, res):
        def go():
            x = torch.randn(N, H, device=device, dtype=torch.bfloat16)
            w = torch.ones(H, device=device, dtype=torch.bfloat16)
            if res:
                add_rmsnorm_triton(x, torch.randn_like(x), w, 1e-5)
            else:
                rmsnorm_triton(x, w, 1e-5)
        return go
    return [(f"N={N} H={H} residual={res}", thunk(N, H, res))
            for H in (3072, 4096, 5120) for N in (1, 64, 512, 4096) for res in (False, True)]


# What the JIT specialises for contiguous NLD rows: 16-byte aligned pointers, and H and the row
# strides (5120, small enough for i32) divisible by 16, so the compile vectorises like the real one.
_ALIGNED = ("x_ptr", "r_ptr", "w_ptr", "y_ptr", "h_ptr", "H", "sx", "sr", "sy", "sh")


def aot_variants(arch: int):
    """Every config of the widest NLD row (H=5120), bf16, with and without the residual add."""
    from .aot import AotVariant
    H = 5120
    out = []
    for res in (False, True):
        for cfg in configs_for(H):
            sig = {"x_ptr": "*bf16", "r_ptr": "*bf16", "w_ptr": "*bf16", "y_ptr": "*bf16", "h_ptr": "*bf16",
                   "N": "i32", "H": "i32", "sx": "i32", "sr": "i32", "sy": "i32", "sh": "i32", "eps": "fp32"}
            meta = {"HAS_RES": res, "BLOCK_T": cfg["BLOCK_T"], "BLOCK_H": block_h(H)}
            out.append(AotVariant(f"rmsnorm{'+res' if res else ''}", _rmsnorm_kernel, sig, meta, cfg,
                                  attrs={a: [["tt.divisibility", 16]] for a in _ALIGNED}))
    return out
