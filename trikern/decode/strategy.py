"""The contract between the decode driver (driver.py) and one decoding mode at one block size.

Every mode starts from, and returns to, the same state between steps: the cache holds the prompt
and every emitted token but the newest, and `seed` ([1] on the device) is that newest token, whose
K/V the next step writes. Because the state is shared, the driver may hand it from one strategy to
another between any two steps (`start`), which is what `mode="auto"` does, and a forced token
(thinking budget) is repaired the same way for every mode: truncate the cache, restart from it.
"""
from __future__ import annotations

import torch

from ..sampling import sample
from .common import DecodeContext


class Strategy:
    mode: str = ""

    def __init__(self, ctx: DecodeContext, B: int):
        self.ctx, self.B = ctx, B
        self.seed: torch.Tensor | None = None
        self.drafted = 0  # draft tokens the last step verified (what its acceptance is out of)

    @staticmethod
    def scratch(B: int) -> int:
        """Cache slots past the committed length that one step writes."""
        return B

    @property
    def key(self) -> tuple[str, int]:
        return self.mode, self.B

    def start(self, seed: torch.Tensor):
        """Take over the shared state (after the prefill, a switch or a forced token)."""
        self.seed = seed

    def take_over(self, prev: "Strategy"):
        """Continue from another strategy's state (a switch): its seed; a subclass may keep more."""
        self.start(prev.seed)

    def first_token(self, logits: torch.Tensor) -> torch.Tensor:
        g = self.ctx.gen
        return sample(logits, g.temperature, g.top_k, g.top_p, self.ctx.generator)

    def prefill(self, prompt_ids: torch.Tensor, run, timer) -> list[int]:
        """Causal pass over the prompt; returns the first generated token(s) and sets the state."""
        seed = self.first_token(self.ctx.prefill(prompt_ids)[None])
        self.start(seed)
        return seed.tolist()

    def step(self, run, timer, em) -> tuple[list[int], int]:
        """One step from the shared state back to it: (tokens produced, forwards run). The emitter
        `em` tells what is left (`em.room`) and whether emitting tokens would end the generation
        (`em.ends(tokens)`), so work past the end is skipped.
        Device work goes through `run` (eager, or a CUDA graph per key); the one host read is the
        produced tokens."""
        raise NotImplementedError
