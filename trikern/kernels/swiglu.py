"""SwiGLU activation: silu(gate) * up, the MLP's elementwise middle.

Math in fp32, one rounding back to the input dtype. The Triton kernel tiles [rows, features] as
BLOCK_R x BLOCK_C; gate and up may be row-strided views (e.g. halves of a fused gate_up projection).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION
from .layout import unit_rows

CONFIGS = [
    {"BLOCK_R": 1, "BLOCK_C": 1024, "num_warps": 4},
    {"BLOCK_R": 1, "BLOCK_C": 2048, "num_warps": 8},
    {"BLOCK_R": 2, "BLOCK_C": 1024, "num_warps": 4},
    {"BLOCK_R": 4, "BLOCK_C": 1024, "num_warps": 8},
    {"BLOCK_R": 4, "BLOCK_C": 2048, "num_warps": 8},
]


def swiglu_ref(gate, up):
    # silu(gate) * up in fp32: in place on the fresh fp32 copy of gate (up is widened exactly by mul_).
    return F.silu(gate.float(), inplace=gate.dtype != torch.float32).mul_(up).to(gate.dtype)


@triton.jit
def _swiglu_kernel(g_ptr, u_ptr, o_ptr, R, C, sg, su, so, BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr):
    rows = tl.program_id(0).to(tl.int64) * BLOCK_R + tl.arange(0, BLOCK_R)
    cols = tl.program_id(1).to(tl.int64) * BLOCK_C + tl.arange(0, BLOCK_C)
    m = (rows < R)[:, None] & (cols < C)[None, :]
    g = tl.load(g_ptr + rows[:, None] * sg + cols[None, :], mask=m, other=0.0).to(tl.float32)
    u = tl.load(u_ptr + rows[:, None] * su + cols[None, :], mask=m, other=0.0).to(tl.float32)
    out = g / (1.0 + tl.exp(-g)) * u
    tl.store(o_ptr + rows[:, None] * so + cols[None, :], out.to(o_ptr.dtype.element_ty), mask=m)


def swiglu_triton(gate, up, config=None):
    """Triton launcher; `config` forces one launch config (tests), else autotune chooses."""
    if gate.shape != up.shape or gate.dtype != up.dtype or gate.device != up.device:
        raise ValueError(f"swiglu: gate ({tuple(gate.shape)}, {gate.dtype}, {gate.device}) and up "
                         f"({tuple(up.shape)}, {up.dtype}, {up.device}) must have the same shape, dtype and device")
    if gate.dtype not in autotune.FLOAT_DTYPES:
        raise TypeError(f"swiglu: gate has dtype {gate.dtype}; expected float32, float16 or bfloat16")
    if gate.dim() < 1:
        raise ValueError("swiglu: gate and up must have at least one dimension")
    out = torch.empty(gate.shape, dtype=gate.dtype, device=gate.device)
    C = gate.shape[-1]
    if out.numel() == 0:
        return out
    R = out.numel() // C
    g2, u2, o2 = unit_rows(gate, C), unit_rows(up, C), out.view(R, C)

    def run(cfg):
        grid = (triton.cdiv(R, cfg["BLOCK_R"]), triton.cdiv(C, cfg["BLOCK_C"]))
        _swiglu_kernel[grid](g2, u2, o2, R, C, g2.stride(0), u2.stride(0), o2.stride(0),
                             enable_fp_fusion=FP_FUSION, **cfg)

    if config is None:
        key = (autotune.bucket(R), autotune.bucket(C, 1024), autotune.dtype_key(gate))
        config = autotune.choose("swiglu", key, CONFIGS, run)
    run(config)
    return out


def tune_shapes(device):
    """Representative launches for `trikern tune`: NLD intermediate sizes, decode to prefill rows."""
    def thunk(R, C):
        def go():
            g = torch.randn(R, C, device=device, dtype=torch.bfloat16)
            swiglu_triton(g, torch.randn_like(g))
        return go
    return [(f"R={R} C={C}", thunk(R, C)) for C in (9216, 14336, 16384) for R in (1, 64, 512, 4096)]


# What the JIT specialises for NLD intermediate sizes (9216 .. 16384, halves of a fused projection
# or separate tensors): 16-byte aligned pointers, C and the row strides (i32) divisible by 16.
_ALIGNED = ("g_ptr", "u_ptr", "o_ptr", "C", "sg", "su", "so")


def aot_variants(arch: int):
    """Every config, bf16."""
    from .aot import AotVariant
    sig = {"g_ptr": "*bf16", "u_ptr": "*bf16", "o_ptr": "*bf16", "R": "i32", "C": "i32",
           "sg": "i32", "su": "i32", "so": "i32"}
    return [AotVariant("swiglu", _swiglu_kernel, sig, {"BLOCK_R": c["BLOCK_R"], "BLOCK_C": c["BLOCK_C"]}, c,
                       attrs={a: [["tt.divisibility", 16]] for a in _ALIGNED})
            for c in CONFIGS]
