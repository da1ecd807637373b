"""Backend selection shared by every op: Triton kernel or PyTorch reference.

`auto` runs Triton on CUDA tensors and the reference elsewhere; `triton` forces the kernels (on CPU
only under TRITON_INTERPRET=1, which must be set before triton is imported); `torch` forces the
references. The model passes its backend string to every op, so one forward runs entirely on one.
"""
from __future__ import annotations

import os

import torch

BACKENDS = ("auto", "triton", "torch")


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def check_backend(backend: str) -> str:
    if backend not in BACKENDS:
        raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
    return backend


def use_triton(backend: str, t: torch.Tensor) -> bool:
    """Whether an op on tensor `t` runs its Triton kernel under `backend`."""
    if backend == "torch":
        return False
    if backend == "auto":
        return t.is_cuda
    if backend == "triton":
        if not t.is_cuda and not interpreting():
            raise RuntimeError(
                "backend='triton' on CPU tensors needs TRITON_INTERPRET=1 set before triton is imported"
            )
        return True
    raise ValueError(f"backend={backend!r}: expected one of {', '.join(BACKENDS)}")
