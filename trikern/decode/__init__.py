"""Decoding: AR, block diffusion, linear and quadratic self-speculation, and `auto`, on one KV cache.

`decode(ctx, prompt_ids, mode)` runs the one driver (driver.py) with the mode's strategy (or, for
`auto`, the policy that picks one per step) and yields committed token ids per step (see
common.py for the contract and stats).
"""
from __future__ import annotations

from typing import Iterator

import torch

from .common import MODES, DecodeContext
from .driver import drive
from .policy import STRATEGIES


def decode(ctx: DecodeContext, prompt_ids: torch.Tensor, mode: str) -> Iterator[list[int]]:
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    if ctx.stats.mode != mode:
        raise ValueError(f"mode={mode!r} but the DecodeContext was sized for mode={ctx.stats.mode!r}")
    return drive(ctx, prompt_ids, mode)


__all__ = ["MODES", "STRATEGIES", "decode"]
