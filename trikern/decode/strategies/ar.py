"""AR decoding (docs/ALGORITHMS.md): one causal forward per token, replayed as a CUDA graph on CUDA."""
from __future__ import annotations

import torch

from ...kernels import CAUSAL
from ...sampling import sample
from .base import StepResult, Strategy


class AR(Strategy):
    mode = "ar"
    auto_blocks = (1,)
    tri_mode = False  # any causal LM

    @staticmethod
    def scratch(B: int) -> int:
        return 1

    def forward(self, pending: torch.Tensor) -> torch.Tensor:
        """Feed the pending token [1] at the cache end, commit its K/V, return the next token [1] (no sync)."""
        ctx, g = self.ctx, self.ctx.gen
        logits = ctx.model(pending, ctx.cache.length.reshape(1), ctx.cache, CAUSAL, write_cache=True)
        ctx.cache.commit(1)
        return sample(logits, g.temperature, g.top_k, g.top_p, ctx.generator)

    def step(self, run, timer, em):
        self.pending = run(("ar", 1), self.forward, self.pending)
        timer.mark("ar")
        return StepResult(self.pending.tolist(), 1)  # the step's one host sync
