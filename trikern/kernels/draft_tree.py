"""Draft-tree expansion: the token ids and positions of one speculative / diffusion chunk, on device.

Every block-shaped pass in trikern is a row of A sub-blocks of W tokens; sub-block i is an anchor
(a known token) followed by W-1 mask tokens:

    tokens[i*W]       = anchors[i]        positions[i*W]     = n + i
    tokens[i*W + a]   = mask_id  (a >= 1) positions[i*W + a] = n + i + a

with n the committed cache length. The three layouts the decode loops use:

- linear self-speculation draft and diffusion block: A = 1 (the pending token), W = B
  -> `[pending, M x (B-1)]` at positions n .. n+B-1 (SPEC §4.2, §4.3);
- quadratic self-speculation step: A = B (the draft d_0 .. d_{B-1}), W = B+1
  -> sub-block i = `[d_i, M x B]`, d_i at n+i and its masks at n+i+1 .. n+i+B (SPEC §4.4);
- quadratic first step (and restart after a forced token): A = 1, W = B+1.

The attention mask of the chunk needs no metadata beyond W: kernels.attention's QUADRATIC mode
takes `sub_block=W` and derives (sub-block, offset) of every query/key from its index.

Inputs:  anchors [A] int64 (A >= 1), cache_len int or 0-dim int64 tensor (n), sub_block int W >= 1,
         mask_id int.
Outputs: tokens [A*W] int64, positions [A*W] int64, both on anchors.device. No host sync: n may
         stay on the device.

The Triton kernel is one elementwise pass over the A*W entries (BLOCK per program); a tensor n is
read by the kernel itself, an int n is passed as an argument.
"""
from __future__ import annotations

import torch
import triton
import triton.language as tl

from . import autotune
from .dispatch import FP_FUSION

# One program writes BLOCK consecutive chunk entries; chunks are at most a few hundred tokens (B*(B+1)).
CONFIGS = [
    {"BLOCK": 128, "num_warps": 1},
    {"BLOCK": 512, "num_warps": 4},
    {"BLOCK": 1024, "num_warps": 4},
]


def _check(anchors, sub_block):
    if anchors.dim() != 1 or anchors.shape[0] < 1 or anchors.dtype != torch.long:
        raise ValueError(f"draft_tree: anchors must be a non-empty [A] int64 tensor; got "
                         f"{tuple(anchors.shape)} {anchors.dtype}")
    if sub_block < 1:
        raise ValueError(f"draft_tree: sub_block={sub_block} must be >= 1")


def draft_tree_ref(anchors, cache_len, sub_block, mask_id):
    _check(anchors, sub_block)
    A, W, dev = anchors.shape[0], int(sub_block), anchors.device
    off = torch.arange(W, device=dev)
    tokens = torch.where(off[None, :] == 0, anchors[:, None], torch.full_like(anchors[:, None], mask_id))
    positions = torch.arange(A, device=dev)[:, None] + off[None, :] + cache_len
    return tokens.reshape(-1), positions.reshape(-1)


@triton.jit
def _draft_tree_kernel(anchor_ptr, n_ptr, tok_ptr, pos_ptr, N, W, n_add, mask_id,
                       LOAD_N: tl.constexpr, BLOCK: tl.constexpr):
    idx = tl.program_id(0).to(tl.int64) * BLOCK + tl.arange(0, BLOCK)
    valid = idx < N
    i = idx // W
    a = idx - i * W
    n = n_add
    if LOAD_N:  # the committed length stays on the device: read it here, never on the host
        n = tl.load(n_ptr).to(tl.int64) + n_add
    anchor = tl.load(anchor_ptr + i, mask=valid & (a == 0), other=0)
    tok = tl.where(a == 0, anchor, mask_id)
    tl.store(tok_ptr + idx, tok, mask=valid)
    tl.store(pos_ptr + idx, n + i + a, mask=valid)


def draft_tree_triton(anchors, cache_len, sub_block, mask_id, config=None):
    """Triton launcher; `config` forces one launch config (tests), else autotune chooses."""
    _check(anchors, sub_block)
    if torch.is_tensor(cache_len):
        if cache_len.dim() != 0 or cache_len.dtype.is_floating_point or cache_len.dtype == torch.bool:
            raise ValueError(f"draft_tree: cache_len must be an int or a 0-dim integer tensor; got "
                             f"{tuple(cache_len.shape)} {cache_len.dtype}")
        if cache_len.device != anchors.device:
            raise ValueError(f"draft_tree: cache_len is on {cache_len.device}, anchors on {anchors.device}")
    A, W = anchors.shape[0], int(sub_block)
    N = A * W
    tokens = torch.empty(N, dtype=torch.long, device=anchors.device)
    positions = torch.empty(N, dtype=torch.long, device=anchors.device)
    anchors = anchors.contiguous()
    load_n = torch.is_tensor(cache_len)
    n_ptr = cache_len if load_n else anchors  # unread when LOAD_N is off
    n_add = 0 if load_n else int(cache_len)

    def run(cfg):
        _draft_tree_kernel[(triton.cdiv(N, cfg["BLOCK"]),)](anchors, n_ptr, tokens, positions, N, W, n_add,
                                                          int(mask_id), LOAD_N=load_n,
                                                          enable_fp_fusion=FP_FUSION, **cfg)

    if config is None:
        config = autotune.choose("draft_tree", (autotune.bucket(N),), CONFIGS, run)
    run(config)
    return tokens, positions


def tune_shapes(device):
    """Representative launches for `trikern tune`: linear blocks and quadratic steps, B = 8 .. 32."""
    def thunk(A, W):
        def go():
            draft_tree_triton(torch.zeros(A, dtype=torch.long, device=device),
                              torch.zeros((), dtype=torch.long, device=device), W, 0)
        return go
    return ([(f"linear B={B}", thunk(1, B)) for B in (8, 32)]
            + [(f"quadratic B={B}", thunk(B, B + 1)) for B in (8, 16, 32)])


def aot_variants(arch: int):
    """Every config, cache length read from the device."""
    from .aot import AotVariant
    sig = {"anchor_ptr": "*i64", "n_ptr": "*i64", "tok_ptr": "*i64", "pos_ptr": "*i64", "N": "i32", "W": "i32",
           "n_add": "i32", "mask_id": "i32"}
    return [AotVariant("draft_tree", _draft_tree_kernel, sig, {"LOAD_N": True, "BLOCK": c["BLOCK"]}, c)
            for c in CONFIGS]
