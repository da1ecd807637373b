"""Decoding loops: AR, block diffusion, linear and quadratic self-speculation on one KV cache.

`decode(ctx, prompt_ids, mode)` runs the mode's generator, which yields committed token ids per
step (see common.py for the contract and stats).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .ar import decode_ar
from .common import MODES, DecodeContext
from .diffusion import decode_diffusion
from .spec_linear import decode_spec_linear
from .spec_quadratic import decode_spec_quadratic

DECODERS = {
    "ar": decode_ar,
    "diffusion": decode_diffusion,
    "spec-linear": decode_spec_linear,
    "spec-quadratic": decode_spec_quadratic,
}
assert tuple(DECODERS) == MODES


def decode(ctx: DecodeContext, prompt_ids: torch.Tensor, mode: str) -> Iterator[list[int]]:
    if mode not in DECODERS:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(DECODERS)}")
    if ctx.stats.mode != mode:
        raise ValueError(f"mode={mode!r} but the DecodeContext was sized for mode={ctx.stats.mode!r}")
    return DECODERS[mode](ctx, prompt_ids)


__all__ = ["DECODERS", "decode", "decode_ar", "decode_diffusion", "decode_spec_linear", "decode_spec_quadratic"]
