"""Token selection: greedy, temperature, top-k, top-p, reproducible under a seed.

Everything stays on device and shape-static (no `.item()`), so the decode steps that call it can be
captured as CUDA graphs. `probs` gives the filtered distribution that speculative sampling needs
(p and q in the min(1, p/q) rule); `sample` draws from it with the Gumbel/exponential trick.
"""
from __future__ import annotations

import torch


def probs(logits: torch.Tensor, temperature: float, top_k: int = 0, top_p: float = 1.0) -> torch.Tensor:
    """[N, V] fp32 distribution after temperature, top-k and top-p (temperature > 0)."""
    x = logits.float() / temperature
    V = x.shape[-1]
    if 0 < top_k < V:
        kth = torch.topk(x, top_k, dim=-1).values[..., -1:]
        x = x.masked_fill(x < kth, float("-inf"))
    if top_p < 1.0:
        sorted_x, order = torch.sort(x, dim=-1, descending=True)
        p = torch.softmax(sorted_x, dim=-1)
        # drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token)
        drop = (p.cumsum(-1) - p) >= top_p
        sorted_x = sorted_x.masked_fill(drop, float("-inf"))
        x = torch.full_like(x, float("-inf")).scatter(-1, order, sorted_x)
    return torch.softmax(x, dim=-1)


def draw(p: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    """One sample per row of a [N, V] distribution: argmax p / Exp(1) (no host sync)."""
    e = torch.empty_like(p).exponential_(1.0, generator=generator)
    return torch.argmax(p / e, dim=-1)


def sample(logits, temperature=0.0, top_k=0, top_p=1.0, generator=None) -> torch.Tensor:
    """Token ids [N] for logits [N, V]; greedy when temperature == 0."""
    if temperature <= 0:
        return torch.argmax(logits, dim=-1)
    return draw(probs(logits, temperature, top_k, top_p), generator)


def make_generator(seed: int | None, device) -> torch.Generator:
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(int(seed))
    return g
