"""Backend names and selection, shared by every op (ops.py routes each op by them).

- `triton`: the Triton kernels (on CPU only under TRITON_INTERPRET=1, which must be set before
  triton is imported).
- `cpu`: the fast CPU implementations (kernels/cpu/), CPU tensors only; an op without one runs its
  reference.
- `torch`: the PyTorch references: plain fp32 math, the spec the other two are tested against.
- `auto`: `triton` on CUDA tensors, `cpu` on CPU tensors, `torch` elsewhere.

The model passes its backend string to every op, so one forward runs entirely on one backend.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "cpu", "triton", "torch")

# Every Triton launch passes `enable_fp_fusion=FP_FUSION`: fused multiply-adds on, triton's default up
# to 3.9, which the shipped configs were tuned with. Triton 3.9 warns at every compile that leaves the
# choice to TRITON_DEFAULT_FP_FUSION (its default turns off in 3.10); passing it per launch keeps the
# behaviour and silences that without setting the variable for the whole process. (The interpreter
# drops the option; check-kernels compiles with the same value.)
FP_FUSION = True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def resolve(backend: str, t: torch.Tensor) -> str:
    """The backend an op on tensor `t` runs under `backend`: "triton", "cpu" or "torch"."""
    if backend == "auto":
        return "triton" if t.is_cuda else "cpu" if t.is_cpu else "torch"
    if backend == "cpu":
        if not t.is_cpu:
            raise RuntimeError(f"backend='cpu' needs CPU tensors; got a tensor on {t.device}")
        return backend
    if backend == "triton":
        if not t.is_cuda and not interpreting():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
        return backend
    if backend == "torch":
        return backend
    raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")


def use_triton(backend: str, t: torch.Tensor) -> bool:
    """Whether an op on tensor `t` runs its Triton kernel under `backend`."""
    return resolve(backend, t) == "triton"
