"""What this CPU can do for trikern, asked once: native bf16 compute, oneDNN's bf16 weight packing,
and the default CPU dtype that follows, with the reason (for `trikern --version` and the stats).

CPUs differ by more than speed. One with AVX-512 BF16 or AMX multiplies bf16 natively (bf16 halves
the bytes a decode step reads, and its products are the fastest there); an AVX2-only CPU has no
bf16 arithmetic at all, so every bf16 matmul converts in software and runs ~5x slower than fp32
(measured: 4-5 GFLOP/s against 20-27), and oneDNN refuses to pack bf16 weights (it needs AVX-512
BW/VL/DQ or AVX-NE-CONVERT). The default dtype is therefore bf16 only where the CPU computes in it.
A missing fast path is a fact about the machine, not a fault: it is logged once at INFO level.
"""
from __future__ import annotations

import functools
import glob
import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger("trikern")


@dataclass(frozen=True)
class CpuFeatures:
    capability: str  # ATen's vector ISA: "AVX512", "AVX2", "DEFAULT", ...
    native_bf16: bool  # AVX-512 BF16 or AMX: bf16 products in hardware
    amx: bool
    onednn_bf16: bool  # oneDNN packs and multiplies bf16 weights (kernels/cpu/linear.py's packed path)

    @property
    def default_dtype(self) -> torch.dtype:
        return torch.bfloat16 if self.native_bf16 else torch.float32

    @property
    def dtype_reason(self) -> str:
        if self.native_bf16:
            unit = "AMX" if self.amx else "AVX-512 BF16"
            return f"bfloat16: this CPU computes in bf16 ({unit})"
        return ("float32: this CPU has no native bf16 (no AVX-512 BF16 / AMX); bf16 matmuls would be "
                "emulated, several times slower than fp32")

    def summary(self) -> str:
        bf16 = ("native bf16" if self.native_bf16 else "no native bf16") + (" + AMX" if self.amx else "")
        packing = "oneDNN bf16 packing" if self.onednn_bf16 else "no oneDNN bf16 packing"
        return f"CPU {self.capability}, {bf16}, {packing}; default CPU dtype {self.dtype_reason}"


def _flag(name: str) -> bool:
    fn = getattr(torch.cpu, name, None)  # private probes: absent in some builds, which means "unknown: no"
    try:
        return bool(fn()) if fn is not None else False
    except RuntimeError:
        return False


def _capped() -> bool:
    """Whether the vector ISA is capped below AVX-512 (ATEN_CPU_CAPABILITY=avx2, ONEDNN_MAX_CPU_ISA=AVX2):
    torch's CPUID probes do not see the cap, the kernels do. It also makes an AVX2-only machine
    reproducible on an AVX-512 one (tests and benchmarks; see README)."""
    isa = (os.environ.get("ONEDNN_MAX_CPU_ISA") or os.environ.get("DNNL_MAX_CPU_ISA") or "ALL").upper()
    return torch.backends.cpu.get_cpu_capability() != "AVX512" or not isa.startswith(("ALL", "AVX512", "AVX10"))


@functools.lru_cache(maxsize=None)
def detect() -> CpuFeatures:
    mkldnn = getattr(torch.ops, "mkldnn", None)
    try:
        packing = bool(torch.backends.mkldnn.is_available() and mkldnn is not None
                       and mkldnn._is_mkldnn_bf16_supported())
    except (RuntimeError, AttributeError):
        packing = False
    capped = _capped()
    f = CpuFeatures(capability=torch.backends.cpu.get_cpu_capability(),
                    native_bf16=not capped and (_flag("_is_avx512_bf16_supported") or _flag("_is_amx_tile_supported")),
                    amx=not capped and _flag("_is_amx_tile_supported"), onednn_bf16=packing and not capped)
    if not f.native_bf16 or not f.onednn_bf16:
        log.info("trikern: %s", f.summary())
    return f


@functools.lru_cache(maxsize=None)
def last_level_cache_bytes(root: str = "/sys/devices/system/cpu/cpu0/cache", default: int = 32 << 20) -> int:
    """The largest CPU cache's size (Linux sysfs; `default` where it cannot be read)."""
    best = 0
    for d in glob.glob(os.path.join(root, "index*")):
        try:
            with open(os.path.join(d, "size")) as f:
                text = f.read().strip().upper()
        except OSError:
            continue
        scale = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30}.get(text[-1:], 1)
        digits = text.rstrip("KMG")
        if digits.isdigit():
            best = max(best, int(digits) * scale)
    return best or default


def default_dtype() -> tuple[torch.dtype, str]:
    """The CPU dtype a model loads in when none is given, and why."""
    f = detect()
    return f.default_dtype, f.dtype_reason


__all__ = ["CpuFeatures", "default_dtype", "detect", "last_level_cache_bytes"]
