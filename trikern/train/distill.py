"""Batched causal passes for training-side code: greedy continuation (self-distillation data)
and held-out perplexity.

Training the diffusion stream on the model's own greedy continuations aligns its drafts with what
the AR verifier will pick, which is what self-speculation's acceptance length measures. These
passes run over a batch [b, T] with a per-layer K/V list and plain SDPA, independent of the
batch-1 inference cache machinery.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


class BatchedCausal:
    """Causal passes over a batch of equal-length sequences; K/V kept so calls can continue them."""

    def __init__(self, model, batch: int):
        self.model, self.b, self.n = model, batch, 0
        self.cache: list[tuple[torch.Tensor, torch.Tensor] | None] = [None] * model.cfg.num_hidden_layers

    def _attend(self, i, q, k, v):
        cfg, b = self.model.cfg, self.b
        Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim
        T = q.shape[0] // b
        q = q.view(b, T, Hq, D).transpose(1, 2)
        k = k.view(b, T, Hkv, D).transpose(1, 2)
        v = v.view(b, T, Hkv, D).transpose(1, 2)
        if self.cache[i] is not None:
            k = torch.cat([self.cache[i][0], k], dim=2)
            v = torch.cat([self.cache[i][1], v], dim=2)
        self.cache[i] = (k, v)
        r = Hq // Hkv
        # A multi-token chunk is only ever the first call (empty cache), so plain is_causal is right.
        o = F.scaled_dot_product_attention(q, k.repeat_interleave(r, 1), v.repeat_interleave(r, 1),
                                           is_causal=T > 1, scale=self.model.scale)
        return o.transpose(1, 2).reshape(b * T, Hq, D)

    def hidden(self, tokens: torch.Tensor) -> torch.Tensor:
        """Feed tokens [b, T] after what was fed before; returns final hidden [b, T, H]."""
        b, T = tokens.shape
        if T > 1 and self.n:
            raise ValueError("BatchedCausal: multi-token chunks only as the first call")
        pos = torch.arange(self.n, self.n + T).repeat(b)
        h = self.model.forward_hidden(tokens.reshape(-1), pos, self._attend)
        self.n += T
        return h.view(b, T, -1)


@torch.no_grad()
def greedy_continue(model, prefix: torch.Tensor, total: int, forbid: tuple[int, ...] = ()) -> torch.Tensor:
    """Extend prefix [b, P] greedily to [b, total]; tokens in `forbid` (e.g. the mask id) are never picked."""
    run = BatchedCausal(model, prefix.shape[0])
    out, feed = [prefix], prefix
    for _ in range(prefix.shape[1], total):
        logits = model.logits(run.hidden(feed)[:, -1]).float()
        if forbid:
            logits[:, list(forbid)] = float("-inf")
        feed = logits.argmax(-1)[:, None]
        out.append(feed)
    return torch.cat(out, dim=1)


@torch.no_grad()
def causal_nll(model, windows: torch.Tensor) -> tuple[float, int]:
    """Summed next-token negative log-likelihood (fp32) over windows [b, T] and the token count."""
    logits = model.logits(BatchedCausal(model, windows.shape[0]).hidden(windows)[:, :-1]).float()
    nll = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), windows[:, 1:].reshape(-1), reduction="sum")
    return nll.item(), windows[:, 1:].numel()
