"""Decoding: AR, block diffusion, linear and quadratic self-speculation, and `auto`, on one KV cache.

The layers, from the bottom: context.py (settings, stats, the DecodeContext every step reads);
strategies/ (one mode at one block size: a step from the shared state back to it); registry.py (the
modes and what follows from them); runtime.py (running and timing a step's device work);
emitter.py (what a generation yields); auto/ (the policy that picks a strategy per step, its
acceptance and cost estimates, the persisted step-cost profile); driver.py (the one loop).

`decode(ctx, prompt_ids, mode)` runs the driver with the mode's policy and yields committed token
ids per step.
"""
from __future__ import annotations

from typing import Iterator

import torch

from .auto.policy import policy_for
from .context import ContextLengthError, DecodeContext, GenerationConfig, Stats
from .driver import drive
from .registry import AUTO, MODES, STEP_MODES, STRATEGIES, candidates, check_mode, new_context


def decode(ctx: DecodeContext, prompt_ids: torch.Tensor, mode: str | None = None,
           profile: bool = True) -> Iterator[list[int]]:
    """The driver with the policy of the mode `ctx` was made for (`new_context` checked it); `mode`,
    if given, must be that mode. auto uses the persisted step-cost profile unless `profile` is False."""
    mode = ctx.stats.mode if mode is None else mode
    if ctx.stats.mode != mode:
        raise ValueError(f"mode={mode!r} but the DecodeContext was sized for mode={ctx.stats.mode!r}")
    return drive(ctx, prompt_ids, policy_for(ctx, mode, profile))


__all__ = ["AUTO", "MODES", "STEP_MODES", "STRATEGIES", "ContextLengthError", "DecodeContext", "GenerationConfig",
           "Stats", "candidates", "check_mode", "decode", "drive", "new_context", "policy_for"]
