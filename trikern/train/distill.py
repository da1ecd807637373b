"""Self-distillation data: real prefixes continued greedily by the model being trained.

Training the diffusion stream on the model's own greedy continuations aligns its drafts with what
the AR verifier will pick, which is what self-speculation's acceptance length measures. Generation
is batched with a per-layer K/V list (plain SDPA), independent of the inference cache machinery.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.no_grad()
def greedy_continue(model, prefix: torch.Tensor, total: int, forbid: tuple[int, ...] = ()) -> torch.Tensor:
    """Extend prefix [b, P] greedily to [b, total]; tokens in `forbid` (e.g. the mask id) are never picked."""
    cfg = model.cfg
    b, P = prefix.shape
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
    cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * cfg.num_hidden_layers

    def attend(i, q, k, v):
        T = q.shape[0] // b
        q = q.view(b, T, Hq, D).transpose(1, 2)
        k = k.view(b, T, Hkv, D).transpose(1, 2)
        v = v.view(b, T, Hkv, D).transpose(1, 2)
        if cache[i] is not None:
            k = torch.cat([cache[i][0], k], dim=2)
            v = torch.cat([cache[i][1], v], dim=2)
        cache[i] = (k, v)
        r = Hq // Hkv
        o = F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1),
                                           is_causal=T > 1, scale=model.scale)
        return o.transpose(1, 2).reshape(b * T, Hq, D)

    out = [prefix]
    tokens, pos = prefix.reshape(-1), torch.arange(P).repeat(b)
    for n in range(P, total):
        h = model.forward_hidden(tokens, pos, attend).view(b, -1, cfg.hidden_size)[:, -1]
        logits = model.logits(h).float()
        if forbid:
            logits[:, list(forbid)] = float("-inf")
        nxt = logits.argmax(-1)
        out.append(nxt[:, None])
        tokens, pos = nxt, torch.full((b,), n)
    return torch.cat(out, dim=1)
