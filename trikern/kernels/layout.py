"""Tensor layout helpers the launchers share."""
from __future__ import annotations

import torch


def unit_rows(t: torch.Tensor, width: int | None = None) -> torch.Tensor:
    """t as rows with unit column stride: [..., width] flattened to [N, width] when `width` is given
    (else its own shape); a view when possible, a contiguous copy otherwise."""
    t2 = t if width is None else t.reshape(-1, width)
    return t2 if t2.stride(-1) == 1 else t2.contiguous()
