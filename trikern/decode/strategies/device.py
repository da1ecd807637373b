"""Device helpers the strategies share (no host sync): excluding the mask id, drawing drafts,
the verifier's inputs, the emitted prefix of a verify op's tokens."""
from __future__ import annotations

import torch

from ...sampling import draw, probs
from ..context import DecodeContext


def require_mask_id(ctx: DecodeContext, mode: str) -> tuple[int, torch.Tensor]:
    """(mask id, the same as a [1] int64 device tensor)."""
    m = ctx.cfg.mask_token_id
    if m is None:
        raise ValueError(f"mode={mode!r} needs a mask token: {ctx.cfg.model_type} config has no mask_token_id")
    return int(m), torch.tensor([int(m)], device=ctx.device)


def without_mask(logits: torch.Tensor, mask_index: torch.Tensor) -> torch.Tensor:
    """Logits with the mask id's column (mask_index: [1] int64 on the device, made before any
    capture) at -inf: never drafted, revealed or emitted by diffusion."""
    return logits.index_fill(-1, mask_index, float("-inf"))


def draw_drafts(ctx: DecodeContext, logits: torch.Tensor):
    """Draft tokens [N] for logits [N, V] and the distribution they were drawn from (None when
    greedy): what the sampled verify rule needs as q."""
    g = ctx.gen
    if g.temperature <= 0:
        return torch.argmax(logits, dim=-1), None
    q = probs(logits, g.temperature, g.top_k, g.top_p)
    return draw(q, ctx.generator), q


def verifier_inputs(ctx: DecodeContext, logits: torch.Tensor, drafts: int):
    """(target, uniforms, noise) for kernels.verify: logits when greedy, else p plus the coins."""
    g = ctx.gen
    if g.temperature <= 0:
        return logits, None, None
    p = probs(logits, g.temperature, g.top_k, g.top_p)
    u = torch.rand(drafts, device=logits.device, generator=ctx.generator)
    e = torch.empty(p.shape[-1], device=logits.device).exponential_(1.0, generator=ctx.generator)
    return p, u, e


def produced(tokens_list: list[int]) -> list[int]:
    """The emitted prefix of a verify op's padded token list (padding is -1)."""
    return [t for t in tokens_list if t >= 0]
