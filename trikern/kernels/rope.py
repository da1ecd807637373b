"""Rotary position embedding (NeoX rotate-half) with the Llama-4 query scaling fused.

q: [T, Hq, D], k: [T, Hkv, D], positions: [T] int64 absolute positions, inv_freq: [D/2] fp32
(computed once on the host by `trikern.config.inv_freq`). `attn_factor` multiplies cos/sin (YaRN's
mscale ratio, 1 for NLD). With `llama4_beta`, q is scaled by 1 + beta * ln(1 + floor(pos / L))
after rotation (an exact no-op below L).
"""
from __future__ import annotations

import torch

from .dispatch import use_triton


def rope_ref(q, k, positions, inv_freq, attn_factor=1.0, llama4_beta=None, llama4_len=1):
    ang = positions.to(torch.float32)[:, None] * inv_freq.to(torch.float32)[None, :]  # [T, D/2]
    cos = (torch.cos(ang) * attn_factor)[:, None, :]
    sin = (torch.sin(ang) * attn_factor)[:, None, :]

    def rot(x):
        xf = x.float()
        x1, x2 = xf.chunk(2, dim=-1)
        return torch.cat([x1 * cos - x2 * sin, x2 * cos + x1 * sin], dim=-1)

    qr, kr = rot(q), rot(k)
    if llama4_beta is not None:
        scale = 1 + llama4_beta * torch.log1p(torch.floor(positions.to(torch.float32) / llama4_len))
        qr = qr * scale[:, None, None]
    return qr.to(q.dtype), kr.to(k.dtype)


def rope(q, k, positions, inv_freq, attn_factor=1.0, llama4_beta=None, llama4_len=1, backend="auto"):
    if use_triton(backend, q):
        return rope_triton(q, k, positions, inv_freq, attn_factor, llama4_beta, llama4_len)
    return rope_ref(q, k, positions, inv_freq, attn_factor, llama4_beta, llama4_len)


def rope_triton(q, k, positions, inv_freq, attn_factor, llama4_beta, llama4_len):
    raise NotImplementedError("rope: Triton kernel not written yet")
