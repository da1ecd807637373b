"""Reveal step of block diffusion (SPEC §4.2): fill the most confident masked positions of a block.

After one bidirectional denoise pass, every still-masked position i gets a candidate x0_i and a
confidence; the most confident masked position is revealed, and so is every masked position whose
confidence reaches the threshold. On device, shape-static, no host sync.

Inputs
  tokens     [T] int64, the block (values at masked positions are ignored).
  masked     [T] bool, True where the position is still a mask. (An explicit flag, not
             tokens == mask_id: the seed is an AR token and may legitimately equal any id.)
  logits     [T, V] from the denoise pass; row i predicts the token *at* position i (no shift).
  threshold  float in [0, 1].
  mask_id    int: its column is excluded before anything else, so it is never a candidate and
             takes no probability mass.
  probs      None (greedy) or [T, V] fp32 sampling distribution (temperature / top-k / top-p
             applied by `trikern.sampling.probs`; its mask column is ignored).
  noise      [T, V] fp32 Exp(1) samples, with `probs`: candidate = argmax(probs / noise), the
             exponential race, i.e. a Gumbel-max sample at the request's temperature.

Rule
  candidate_i  = argmax_v logits[i, v] (greedy) or argmax_v probs[i, v] / noise[i, v], v != mask_id
  confidence_i = softmax(logits[i] with the mask column at -inf, fp32)[candidate_i]
                 (the model's own distribution at temperature 1, over the full vocabulary)
  reveal_i     = masked_i and (confidence_i >= threshold or i == argmax_{j masked} confidence_j)
                 (ties: the lowest index). With no masked position nothing changes.

Outputs
  tokens [T] int64 with candidates written at revealed positions; masked [T] bool updated.
"""
from __future__ import annotations

import torch

from .dispatch import use_triton


def _check(tokens, masked, logits, probs, noise):
    if tokens.dim() != 1 or tokens.dtype != torch.long:
        raise ValueError(f"reveal: tokens must be [T] int64; got {tuple(tokens.shape)} {tokens.dtype}")
    T = tokens.shape[0]
    if masked.shape != (T,) or masked.dtype != torch.bool:
        raise ValueError(f"reveal: masked must be [T={T}] bool; got {tuple(masked.shape)} {masked.dtype}")
    if logits.dim() != 2 or logits.shape[0] != T:
        raise ValueError(f"reveal: logits must be [T={T}, V]; got {tuple(logits.shape)}")
    if (probs is None) != (noise is None):
        raise ValueError("reveal: probs and noise go together (sampled reveal) or are both None (greedy)")
    if probs is not None and (probs.shape != logits.shape or noise.shape != logits.shape):
        raise ValueError(f"reveal: probs {tuple(probs.shape)} and noise {tuple(noise.shape)} must match "
                         f"logits {tuple(logits.shape)}")


def reveal_ref(tokens, masked, logits, threshold, mask_id, probs=None, noise=None):
    _check(tokens, masked, logits, probs, noise)
    V = logits.shape[1]
    not_mask = torch.arange(V, device=logits.device) != mask_id
    x = logits.float().masked_fill(~not_mask, float("-inf"))
    if probs is None:
        cand = torch.argmax(x, dim=-1)
    else:
        cand = torch.argmax(probs.float().masked_fill(~not_mask, 0.0) / noise, dim=-1)
    conf = torch.softmax(x, dim=-1).gather(1, cand[:, None])[:, 0]
    conf_masked = torch.where(masked, conf, torch.full_like(conf, -1.0))
    best = torch.argmax(conf_masked)
    idx = torch.arange(tokens.shape[0], device=tokens.device)
    reveal = masked & ((conf >= threshold) | (idx == best))
    return torch.where(reveal, cand, tokens), masked & ~reveal


def reveal(tokens, masked, logits, threshold, mask_id, probs=None, noise=None, backend="auto"):
    if use_triton(backend, logits):
        return reveal_triton(tokens, masked, logits, threshold, mask_id, probs, noise)
    return reveal_ref(tokens, masked, logits, threshold, mask_id, probs, noise)


def reveal_triton(tokens, masked, logits, threshold, mask_id, probs, noise):
    raise NotImplementedError("reveal: Triton kernel not written yet")
