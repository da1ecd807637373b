"""Draft-tree expansion: the token ids and positions of one speculative / diffusion chunk, on device.

Every block-shaped pass in trikern is a row of A sub-blocks of S tokens; sub-block i is an anchor
(a known token) followed by S-1 mask tokens:

    tokens[i*S]       = anchors[i]        positions[i*S]     = n + i
    tokens[i*S + a]   = mask_id  (a >= 1) positions[i*S + a] = n + i + a

with n the committed cache length. The three layouts the decode loops use:

- linear self-speculation draft and diffusion block: A = 1 (the seed), S = B
  -> `[seed, M x (B-1)]` at positions n .. n+B-1 (SPEC §4.2, §4.3);
- quadratic self-speculation step: A = B (the draft d_0 .. d_{B-1}), S = B+1
  -> sub-block i = `[d_i, M x B]`, d_i at n+i and its masks at n+i+1 .. n+i+B (SPEC §4.4);
- quadratic first step (and restart after a forced token): A = 1, S = B+1.

The attention mask of the chunk needs no metadata beyond S: kernels.attention's QUADRATIC mode
takes `sub_block=S` and derives (sub-block, offset) of every query/key from its index.

Inputs:  anchors [A] int64 (A >= 1), cache_len int or 0-dim int64 tensor (n), sub_block int S >= 1,
         mask_id int.
Outputs: tokens [A*S] int64, positions [A*S] int64, both on anchors.device. No host sync: n may
         stay on the device.
"""
from __future__ import annotations

import torch

from .dispatch import use_triton


def _check(anchors, sub_block):
    if anchors.dim() != 1 or anchors.shape[0] < 1 or anchors.dtype != torch.long:
        raise ValueError(f"draft_tree: anchors must be a non-empty [A] int64 tensor; got "
                         f"{tuple(anchors.shape)} {anchors.dtype}")
    if sub_block < 1:
        raise ValueError(f"draft_tree: sub_block={sub_block} must be >= 1")


def draft_tree_ref(anchors, cache_len, sub_block, mask_id):
    _check(anchors, sub_block)
    A, S, dev = anchors.shape[0], int(sub_block), anchors.device
    off = torch.arange(S, device=dev)
    tokens = torch.where(off[None, :] == 0, anchors[:, None], torch.full_like(anchors[:, None], mask_id))
    positions = torch.arange(A, device=dev)[:, None] + off[None, :] + cache_len
    return tokens.reshape(-1), positions.reshape(-1)


def draft_tree(anchors, cache_len, sub_block, mask_id, backend="auto"):
    if use_triton(backend, anchors):
        return draft_tree_triton(anchors, cache_len, sub_block, mask_id)
    return draft_tree_ref(anchors, cache_len, sub_block, mask_id)


def draft_tree_triton(anchors, cache_len, sub_block, mask_id):
    raise NotImplementedError("draft_tree: Triton kernel not written yet")
