"""What a generation yields: the tokens each step produced, cut by the thinking budget (the
end-think token forced in), the first EOS and the token budget.

When the emitter forces a token the device state no longer matches the output; the driver repairs
it (truncate the cache, restart from the forced token), which only happens between steps.
"""
from __future__ import annotations

from .context import DecodeContext


class Emitter:
    """Output bookkeeping of one generation; `take` is called once per step with its tokens."""

    def __init__(self, ctx: DecodeContext):
        self.ctx = ctx
        self.emitted = 0
        self.thinking = ctx.gen.thinking_budget is not None

    def take(self, tokens: list[int]) -> tuple[list[int], bool, bool]:
        """(tokens to yield, done, forced): `forced` means the last yielded token is the end-think
        token put in place of what the step produced (and decoding goes on)."""
        g, forced = self.ctx.gen, False
        if self.thinking:
            for i, t in enumerate(tokens):
                if self.emitted + i >= g.thinking_budget:  # the budget counts emitted tokens, in every mode
                    forced = t != g.end_think_id
                    tokens = tokens[:i] + [g.end_think_id]
                    self.thinking = False
                    break
                if t == g.end_think_id:
                    self.thinking = False
                    break
        out, done = cut(tokens, self.ctx, self.emitted)
        self.emitted += len(out)
        return out, done, forced and not done

    @property
    def room(self) -> int:
        """Tokens the generation may still emit."""
        return self.ctx.max_new_tokens - self.emitted

    def ends(self, tokens: list[int]) -> bool:
        """Whether taking `tokens` would end the generation (first EOS or the token budget)."""
        return cut(tokens, self.ctx, self.emitted)[1]

    def cache_length(self) -> int:
        """What the cache length is between steps: every emitted token but the newest (the pending
        token, whose K/V the next step writes) is in the cache after the prompt."""
        return self.ctx.stats.prompt_tokens + self.emitted - 1


def cut(tokens: list[int], ctx: DecodeContext, emitted: int) -> tuple[list[int], bool]:
    """Cut a step's tokens at the first EOS (kept) and at the token budget.
    Returns (tokens to yield, whether decoding is done)."""
    eos = set(ctx.gen.stop_token_ids)
    for i, t in enumerate(tokens):
        if t in eos:
            tokens = tokens[: i + 1]
            break
    room = ctx.max_new_tokens - emitted
    done = len(tokens) >= room or (tokens and tokens[-1] in eos)
    return tokens[:room], done
