"""The joint AR + block-diffusion objective of SPEC §6.

A clean sequence x (length N, a multiple of the block size B) is noised into x~ and the model runs
once over [x~ | x] (2N tokens, positions 0..N-1 for both halves) under a block mask:
noisy tokens see their own noisy block and the clean copies of earlier blocks, clean tokens are
causal over the clean half. Masked noisy positions predict the clean token at the same position
(weighted 1/p); the clean half is ordinary next-token prediction.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

DIFFUSION_WEIGHT = 0.3
EPS = 1e-3


def joint_mask(N: int, block: int, device=None) -> torch.Tensor:
    """Boolean [2N, 2N] attention mask (True = query row may attend key column)."""
    if N % block:
        raise ValueError(f"sequence length {N} is not a multiple of the training block size {block}")
    i = torch.arange(2 * N, device=device)
    noisy = i < N
    pos = i % N
    blk = pos // block
    qn, kn = noisy[:, None], noisy[None, :]
    qb, kb = blk[:, None], blk[None, :]
    noisy_own_block = qn & kn & (qb == kb)
    noisy_sees_clean_past = qn & ~kn & (kb < qb)
    clean_causal = ~qn & ~kn & (pos[None, :] <= pos[:, None])
    return noisy_own_block | noisy_sees_clean_past | clean_causal


def add_noise(x: torch.Tensor, mask_id: int, generator: torch.Generator, eps: float = EPS):
    """Per sequence t ~ U(0,1), p = (1-eps) t + eps; mask each token with probability p.
    Returns (noisy [b, N], masked bool [b, N], p [b])."""
    b, N = x.shape
    t = torch.rand(b, generator=generator, device=x.device)
    p = (1 - eps) * t + eps
    masked = torch.rand(b, N, generator=generator, device=x.device) < p[:, None]
    noisy = torch.where(masked, torch.full_like(x, mask_id), x)
    return noisy, masked, p


@dataclass
class LossParts:
    total: torch.Tensor  # the optimised scalar
    ar_ce: float  # mean next-token CE on the clean half (nats/token)
    diff_ce: float  # mean unweighted CE on masked noisy positions
    masked: int


def joint_loss_from_logits(ar_logits, ar_targets, diff_logits, diff_targets, diff_p, N_total,
                           diff_weight=DIFFUSION_WEIGHT) -> LossParts:
    """Total = (w * sum(CE_masked / p) + sum(CE_ar)) / (#masked + N_total); CE in fp32."""
    ce_ar = F.cross_entropy(ar_logits.float(), ar_targets, reduction="none")
    ce_d = F.cross_entropy(diff_logits.float(), diff_targets, reduction="none")
    n_masked = diff_targets.numel()
    total = (diff_weight * (ce_d / diff_p).sum() + ce_ar.sum()) / (n_masked + N_total)
    return LossParts(total, ce_ar.mean().item(), ce_d.mean().item() if n_masked else 0.0, n_masked)


def joint_hidden(model, noisy: torch.Tensor, x: torch.Tensor, block: int) -> torch.Tensor:
    """Final hidden states [b, 2, N, H] of one pass over [noisy | x] under `joint_mask`."""
    cfg = model.cfg
    b, N = x.shape
    tokens = torch.cat([noisy, x], dim=1).reshape(-1)
    pos = torch.arange(N, device=x.device).repeat(2 * b)
    allowed = joint_mask(N, block, x.device)
    Hq, Hkv, D = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim

    def attend(_layer, q, k, v):
        q = q.view(b, 2 * N, Hq, D).transpose(1, 2)
        k = k.view(b, 2 * N, Hkv, D).transpose(1, 2)
        v = v.view(b, 2 * N, Hkv, D).transpose(1, 2)
        if Hq != Hkv:
            k = k.repeat_interleave(Hq // Hkv, dim=1)
            v = v.repeat_interleave(Hq // Hkv, dim=1)
        o = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=model.scale)
        return o.transpose(1, 2).reshape(b * 2 * N, Hq, D)

    return model.forward_hidden(tokens, pos, attend).view(b, 2, N, -1)


def joint_loss(model, x: torch.Tensor, block: int, generator: torch.Generator, mask_id: int | None = None,
               eps: float = EPS, diff_weight: float = DIFFUSION_WEIGHT, ar_keep: torch.Tensor | None = None) -> LossParts:
    """One forward over [x~ | x] for a batch x [b, N] of token ids; returns the SPEC §6 loss.

    `ar_keep` (bool [b, N-1]) drops next-token targets from the AR term (self-distilled tokens: the
    AR target would be the model's own argmax, which only sharpens it into its repetition loops);
    the denominator keeps SPEC's (#masked + N) form."""
    mask_id = model.cfg.mask_token_id if mask_id is None else mask_id
    b, N = x.shape
    noisy, masked, p = add_noise(x, mask_id, generator, eps)
    hidden = joint_hidden(model, noisy, x, block)
    noisy_h, clean_h = hidden[:, 0], hidden[:, 1]
    # Only masked positions carry diffusion loss: project just those through the head.
    diff_logits = model.logits(noisy_h[masked])
    diff_p = p[:, None].expand(b, N)[masked]
    if ar_keep is None:
        ar_h, ar_t = clean_h[:, :-1].reshape(-1, clean_h.shape[-1]), x[:, 1:].reshape(-1)
    else:
        ar_h, ar_t = clean_h[:, :-1][ar_keep], x[:, 1:][ar_keep]
    return joint_loss_from_logits(model.logits(ar_h), ar_t, diff_logits, x[masked], diff_p, b * N, diff_weight)
