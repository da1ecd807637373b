"""One generation inside a batch: its request, its region of the SlotCache and its output state.

A Sequence carries what a single generation's DecodeContext would (`gen`, `max_new_tokens`,
`stats`, `generator`), so the single-sequence emitter (decode/emitter.py: EOS, token budget,
thinking budget) and the strategies' sampling helpers (decode/strategies/device.py) take it as
their context unchanged. Between steps its state is the single-sequence modes' one: the region
holds the prompt and every emitted token but the newest, `pending`.
"""
from __future__ import annotations

import time

import torch

from ..decode.context import GenerationConfig, Stats, check_prompt_length
from ..decode.emitter import Emitter
from ..sampling import make_generator


class Sequence:
    """States: queued (no region yet) -> prefilling (`fed` < `prefill_len`) -> decoding -> done."""

    def __init__(self, prompt, gen: GenerationConfig, context: int, mode: str, device, ident=None):
        gen.validate()
        self.id = ident
        self.prompt = [int(t) for t in prompt]
        n = len(self.prompt)
        if n < 1:
            raise ValueError("prompt is empty: at least one token is needed")
        check_prompt_length(n, context, "the batch's context is {limit}")
        self.gen = gen
        self.max_new_tokens = min(gen.max_new_tokens, context - n)
        self.stats = Stats(mode=mode, prompt_tokens=n)
        self.generator = make_generator(gen.seed, device)
        self.emitter = Emitter(self)
        self.slot: int | None = None
        self.fed = 0  # prompt tokens whose K/V are committed
        self.prefill_len = n  # prompt tokens the causal prefill feeds (the step kind sets it on admission)
        self.draft: torch.Tensor | None = None  # spec-quadratic: the next draft d_0 .. d_{A-1} (d_0 = pending)
        self.q: torch.Tensor | None = None  # its draft distributions under sampling
        self.length = 0  # committed entries in the region (host copy of cache.lengths[slot])
        self.pending: torch.Tensor | None = None  # [1] on the device: emitted, K/V not yet in the cache
        self.tokens: list[int] = []  # emitted so far
        self.done = self.max_new_tokens == 0
        self.t_join = time.perf_counter()  # reset when it gets a region
        self.t_first = self.t_done = None

    @property
    def prefilling(self) -> bool:
        return self.slot is not None and self.fed < self.prefill_len

    @property
    def decoding(self) -> bool:
        return self.slot is not None and not self.done and self.pending is not None

    def emit(self, produced: list[int]) -> tuple[list[int], bool]:
        """Pass a step's tokens through the emitter: (what is yielded, forced). Sets `done`. `forced`:
        the last token yielded is the end-think token the thinking budget put in place of the one
        produced; the driver then repairs the state (truncate, the forced token pending)."""
        out, done, forced = self.emitter.take(produced)
        now = time.perf_counter()
        if self.t_first is None:
            self.t_first = now
            self.stats.prefill_s = now - self.t_join  # from getting a region (other sequences' steps included)
        self.tokens += out
        self.stats.generated_tokens = self.emitter.emitted
        self.stats.decode_s = now - self.t_first
        self.done = done
        if done:
            self.t_done = now
        return out, forced
