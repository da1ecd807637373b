"""SwiGLU activation: silu(gate) * up, the MLP's elementwise middle."""
from __future__ import annotations

import torch.nn.functional as F

from .dispatch import use_triton


def swiglu_ref(gate, up):
    return (F.silu(gate.float()) * up.float()).to(gate.dtype)


def swiglu(gate, up, backend="auto"):
    if use_triton(backend, gate):
        return swiglu_triton(gate, up)
    return swiglu_ref(gate, up)


def swiglu_triton(gate, up):
    raise NotImplementedError("swiglu: Triton kernel not written yet")
