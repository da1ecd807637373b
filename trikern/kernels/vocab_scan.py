"""What verify and reveal share: a row scan over the vocabulary split across SPLIT programs.

Both ops reduce every row of a [T, V] logits (or probabilities) tensor to one winner. A row is cut
into SPLIT chunks of whole BLOCK_V tiles; each program writes its chunk's best (score, index) to
scratch, and a second kernel picks, per row, the best chunk (`pick_split`). The configs below are the
scan's launch configs in both ops.
"""
from __future__ import annotations

import triton
import triton.language as tl

# SPLIT programs per row, capped by the number of BLOCK_V tiles in V (`scan_split`).
CONFIGS = [
    {"BLOCK_V": 1024, "SPLIT": 1, "num_warps": 4},
    {"BLOCK_V": 1024, "SPLIT": 8, "num_warps": 4},
    {"BLOCK_V": 2048, "SPLIT": 4, "num_warps": 8},
    {"BLOCK_V": 2048, "SPLIT": 16, "num_warps": 4},
    {"BLOCK_V": 4096, "SPLIT": 8, "num_warps": 8},
    {"BLOCK_V": 4096, "SPLIT": 32, "num_warps": 8},
]


def scan_split(V: int, cfg: dict) -> tuple[int, int]:
    """(programs per row, columns per program): SPLIT capped so that no program is empty."""
    tiles = triton.cdiv(V, cfg["BLOCK_V"])
    per = triton.cdiv(tiles, min(cfg["SPLIT"], tiles)) * cfg["BLOCK_V"]
    return triton.cdiv(V, per), per


@triton.jit
def pick_split(score_ptr, idx_ptr, rows, row_mask, SPLIT, BLOCK_S: tl.constexpr):
    """Per row, the index of the best split's winner (max value, ties -> the lowest split)."""
    sidx = tl.arange(0, BLOCK_S)
    off = rows[:, None] * SPLIT + sidx[None, :]
    m = row_mask[:, None] & (sidx < SPLIT)[None, :]
    v = tl.load(score_ptr + off, mask=m, other=float("-inf"))
    i = tl.load(idx_ptr + off, mask=m, other=0)
    _, best = tl.max(v, axis=1, return_indices=True)
    return tl.sum(tl.where(sidx[None, :] == best[:, None], i, 0), axis=1)
