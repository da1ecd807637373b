"""The contract between the decode driver (driver.py) and one decoding mode at one block size.

Every mode starts from, and returns to, the same state between steps: the cache holds the prompt
and every emitted token but the newest, and `pending` ([1] on the device) is that newest token, whose
K/V the next step writes (the algorithms' "seed"; `seed` in code is the RNG's). Because the state is
shared, the driver may hand it from one strategy to another between any two steps (`take_over`),
which is what `mode="auto"` does, and a forced token (thinking budget) is repaired the same way for
every mode: truncate the cache, restart from it.

A strategy also says what the auto policy needs to know about it, so the policy names no mode:
whether it is lossless (a candidate for auto), which speculative family its acceptance belongs to
(None: one token a step), the block sizes auto tries, and what entering it from another strategy
costs (`entry_steps`).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ...sampling import sample
from ..context import DecodeContext


@dataclass
class StepResult:
    tokens: list[int]  # produced, before the EOS / budget cut
    forwards: int  # model passes the step ran
    drafted: int = 0  # draft tokens it verified (what its acceptance is out of; 0: none, or a restart)


class Strategy:
    mode: str = ""
    lossless: bool = True  # keeps AR's output distribution: a candidate for mode="auto"
    family: str | None = None  # acceptance is shared by a family's block sizes; None: one token a step
    auto_blocks: tuple[int, ...] = ()  # block sizes auto may run (up to the request's block_size)
    tri_mode: bool = True  # needs a tri-mode checkpoint (a mask token, bidirectional passes)

    def __init__(self, ctx: DecodeContext, B: int):
        self.ctx, self.B = ctx, B
        self.pending: torch.Tensor | None = None

    @staticmethod
    def scratch(B: int) -> int:
        """Cache slots past the committed length that one step writes."""
        return B

    @classmethod
    def scratch_for(cls, B: int, gen) -> int:
        """The same under a request's settings `gen` (a draft tree's width is its `tree_nodes`)."""
        return cls.scratch(B)

    @classmethod
    def entry_steps(cls, B: int, prev: tuple[str, int] | None) -> int:
        """Steps after a switch from `prev` (None: at the start) before this strategy's steps are
        its steady ones; what a policy must pay to find out what it is worth."""
        return 0

    @property
    def key(self) -> tuple[str, int]:
        return self.mode, self.B

    def start(self, pending: torch.Tensor):
        """Take over the shared state (after the prefill, a switch or a forced token)."""
        self.pending = pending

    def take_over(self, prev: "Strategy"):
        """Continue from another strategy's state (a switch): its pending token; a subclass may keep more."""
        self.start(prev.pending)

    def first_token(self, logits: torch.Tensor) -> torch.Tensor:
        g = self.ctx.gen
        return sample(logits, g.temperature, g.top_k, g.top_p, self.ctx.generator)

    def prefill(self, prompt_ids: torch.Tensor, run, timer) -> StepResult:
        """Causal pass over the prompt; the first generated token(s); sets the state."""
        pending = self.first_token(self.ctx.prefill(prompt_ids)[None])
        self.start(pending)
        return StepResult(pending.tolist(), 1)

    def step(self, run, timer, em) -> StepResult:
        """One step from the shared state back to it. The emitter `em` tells what is left
        (`em.room`) and whether emitting tokens would end the generation (`em.ends(tokens)`), so
        work past the end is skipped. Device work goes through `run` (eager, or a CUDA graph per
        key, whose outputs it hands back as copies); the one host read is the produced tokens."""
        raise NotImplementedError
