"""RMSNorm with an optional fused residual add.

Math in fp32, cast back to the input dtype before the weight multiply (the NLD / Llama rule).
With `residual`, computes h = x + residual first and returns (norm(h) * w, h) so the decoder layer
carries the residual stream without a separate add.

The Triton kernel keeps whole rows in registers (BLOCK_T rows x next_pow2(H) columns per program):
hidden sizes are at most a few thousand, so one pass over the row is enough.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import use_triton

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


def rmsnorm_ref(x, weight, eps, residual=None):
    h = x if residual is None else x + residual
    hf = h.float()
    y = (hf * torch.rsqrt(hf.pow(2).mean(-1, keepdim=True) + eps)).to(x.dtype) * weight
    return y if residual is None else (y, h)


def rmsnorm(x, weight, eps, residual=None, backend="auto"):
    if use_triton(backend, x):
        return rmsnorm_triton(x, weight, eps, residual)
    return rmsnorm_ref(x, weight, eps, residual)


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


def _rows(t: torch.Tensor, name: str, H: int) -> torch.Tensor:
    """t as [N, H] with unit column stride (a view when possible)."""
    t2 = t.reshape(-1, H)
    return t2 if t2.stride(1) == 1 else t2.contiguous()


def _check(x, weight, residual):
    if x.dtype not in autotune.FLOAT_DTYPES:
        raise TypeError(f"rmsnorm: x has dtype {x.dtype}; expected float32, float16 or bfloat16")
    if x.dim() < 1 or x.shape[-1] == 0:
        raise ValueError(f"rmsnorm: x {tuple(x.shape)} needs a non-empty last (hidden) dimension")
    H = x.shape[-1]
    if H > MAX_HIDDEN:
        raise ValueError(f"rmsnorm: hidden size {H} exceeds the kernel's {MAX_HIDDEN}")
    if weight.dim() != 1 or weight.shape[0] != H:
        raise ValueError(f"rmsnorm: weight {tuple(weight.shape)} must be [{H}] to match x {tuple(x.shape)}")
    if weight.dtype not in autotune.FLOAT_DTYPES or weight.device != x.device:
        raise TypeError(f"rmsnorm: weight ({weight.dtype}, {weight.device}) must be a float tensor on {x.device}")
    if residual is not None and (residual.shape != x.shape or residual.dtype != x.dtype
                                 or residual.device != x.device):
        raise ValueError(f"rmsnorm: residual ({tuple(residual.shape)}, {residual.dtype}, {residual.device}) "
                         f"must match x ({tuple(x.shape)}, {x.dtype}, {x.device})")


def rmsnorm_triton(x, weight, eps, residual=None, config=None):
    """Triton launcher; `config` forces one launch config (tests), else autotune chooses."""
    _check(x, weight, residual)
    H = x.shape[-1]
    out_dtype = torch.promote_types(x.dtype, weight.dtype)
    y = torch.empty(x.shape, dtype=out_dtype, device=x.device)
    h = torch.empty_like(x) if residual is not None else None
    N = x.numel() // H
    if N == 0:
        return y if residual is None else (y, h)
    x2 = _rows(x, "x", H)
    r2 = _rows(residual, "residual", H) if residual is not None else x2
    y2, h2 = y.view(N, H), (h.view(N, H) if h is not None else y.view(N, H))
    w = weight if weight.stride(0) == 1 else weight.contiguous()

    def run(cfg):
        grid = (triton.cdiv(N, cfg["BLOCK_T"]),)
        _rmsnorm_kernel[grid](x2, r2, w, y2, h2, N, H, x2.stride(0), r2.stride(0), y2.stride(0),
                              h2.stride(0), float(eps), HAS_RES=residual is not None,
                              BLOCK_H=block_h(H), **cfg)

    if config is not None:
        run(config)
    else:
        key = (autotune.bucket(N), H, autotune.dtype_key(x), autotune.dtype_key(weight), residual is not None)
        autotune.launch("rmsnorm", key, configs_for(H), run)
    return y if residual is None else (y, h)


def tune_shapes(device):
    """Representative launches for `trikern tune`: NLD hidden sizes, decode to prefill row counts."""
    def thunk(N, H, res):
        def go():
            x = torch.randn(N, H, device=device, dtype=torch.bfloat16)
            w = torch.ones(H, device=device, dtype=torch.bfloat16)
            rmsnorm_triton(x, w, 1e-5, torch.randn_like(x) if res else None)
        return go
    return [(f"N={N} H={H} residual={res}", thunk(N, H, res))
            for H in (3072, 4096, 5120) for N in (1, 64, 512, 4096) for res in (False, True)]


def aot_variants(arch: int):
    """Every config of the widest NLD row (H=5120), bf16, with and without the residual add."""
    from .aot import AotVariant
    H = 5120
    out = []
    for res in (False, True):
        for cfg in configs_for(H):
            sig = {"x_ptr": "*bf16", "r_ptr": "*bf16", "w_ptr": "*bf16", "y_ptr": "*bf16", "h_ptr": "*bf16",
                   "N": "i32", "H": "i32", "sx": "i64", "sr": "i64", "sy": "i64", "sh": "i64", "eps": "fp32"}
            meta = {"HAS_RES": res, "BLOCK_T": cfg["BLOCK_T"], "BLOCK_H": block_h(H)}
            out.append(AotVariant(f"rmsnorm{'+res' if res else ''}", _rmsnorm_kernel, sig, meta, cfg))
    return out
