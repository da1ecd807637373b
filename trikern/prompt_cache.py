"""A reusable prefix cache the caller can hold: the K/V of the tokens a generation left behind.

`Model.generate / stream / chat(..., prompt_cache=c)` starts from the longest common token prefix of
`c` and the new prompt (prefilling only the rest) and leaves the new prompt + output in `c`, as the
next turn of a chat wants. Without `prompt_cache` the Model's own `prompt_cache` is used, so one
conversation needs nothing; a caller with several (a server with one per conversation or slot) makes
one each with `Model.make_prompt_cache()`.

While a generation runs, the cache is its own (the object is empty); it is filled again when the
generation ends, errors aside, including one stopped early (`should_stop`, `Stream.close()`).
"""
from __future__ import annotations

from dataclasses import fields

import torch

from .cache import KVCache


class PromptCache:
    """The KV cache of `token_ids` (prompt + output of the last generation that used it), for one
    model config, dtype and device. `len(c)`: how many tokens it holds; `c.reset()` frees it."""

    def __init__(self, cfg, dtype: torch.dtype, device: torch.device):
        self.cfg, self.dtype, self.device = cfg, dtype, torch.device(device)
        self.cache: KVCache | None = None
        self._ids: list[int] = []

    @property
    def token_ids(self) -> list[int]:
        """The tokens whose K/V the cache holds (a copy)."""
        return list(self._ids)

    def __len__(self) -> int:
        return len(self._ids)

    def __repr__(self) -> str:
        dtype = str(self.dtype).removeprefix("torch.")
        return f"PromptCache({len(self)} tokens, {self.cfg.model_type}, {dtype}, {self.device})"

    def reset(self):
        """Forget the held tokens and free their K/V (the next prompt is prefilled whole)."""
        self.cache, self._ids = None, []

    def check(self, cfg, dtype: torch.dtype, device: torch.device):
        """ValueError unless this cache fits a model of `cfg` computing in `dtype` on `device`."""
        if cfg != self.cfg:
            diff = next((f.name for f in fields(cfg)
                         if f.compare and getattr(cfg, f.name) != getattr(self.cfg, f.name)), "config")
            raise ValueError(f"prompt_cache: made for a model with a different config ({diff}="
                             f"{getattr(self.cfg, diff, '?')!r}, this model's is {getattr(cfg, diff, '?')!r}): "
                             f"make one with this model's make_prompt_cache()")
        if dtype != self.dtype or torch.device(device) != self.device:
            raise ValueError(f"prompt_cache: made for {str(self.dtype).removeprefix('torch.')} on {self.device}, "
                             f"this model computes in {str(dtype).removeprefix('torch.')} on {device}: make one "
                             f"with this model's make_prompt_cache()")

    def prefix(self, ids: list[int]) -> tuple[KVCache, int] | None:
        """(cache, n): the first n held tokens equal `ids`' first n (None when nothing is shared)."""
        if self.cache is None:
            return None
        n = next((i for i, (a, b) in enumerate(zip(self._ids, ids)) if a != b), min(len(self._ids), len(ids)))
        return (self.cache, n) if n else None

    def keep(self, cache: KVCache, ids: list[int]):
        """Hold `cache`, whose first len(ids) entries are the K/V of `ids` (a finished generation's)."""
        ids = list(ids[:int(cache.length)])
        self.cache, self._ids = (cache, ids) if ids else (None, [])
