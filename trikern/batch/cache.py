"""The batched static KV cache: S sequence regions of `region` slots each, laid out one after another
along the slot axis of one [layers, kv_heads, S * region (+ pad), head_dim] tensor per K and V.

That layout makes a region exactly a single-sequence cache: `view(s)` is a `trikern.cache.KVCache`
over region s (a slice of the slot axis, same strides), so every single-sequence op -- the model's
forward, kernels.verify's commit -- runs on one sequence of the batch unchanged, and a batched
pass writes all its chunks with one index_copy per layer (flat slot = base + position).

`lengths` [S] int64 on the device holds each region's committed length; `view(s).length` is a
0-dim view of its entry, so a commit through the view is a commit here. A region is free or held
by one sequence (`acquire` / `release`); a released region keeps its K/V until it is reused
(BatchDecoder's prefix reuse admits a sequence into the region that holds its prompt's prefix).
"""
from __future__ import annotations

import torch

from ..cache import KVCache


class SlotCache:
    def __init__(self, num_layers, kv_heads, head_dim, seqs: int, capacity: int, dtype, device, scratch: int = 0,
                 pad: int = 0):
        """`seqs` regions, each for `capacity` committed tokens plus `scratch` slots for the widest
        uncommitted chunk of a step; then `pad` slots of no region, where the padding rows of a pass
        padded to a batch bucket (batch/graphs.py) write their K/V."""
        if int(seqs) < 1:
            raise ValueError(f"SlotCache: seqs={seqs!r} must be >= 1")
        if int(capacity) < 1 or int(scratch) < 0 or int(pad) < 0:
            raise ValueError(f"SlotCache: capacity={capacity!r} must be >= 1, scratch={scratch!r} and pad={pad!r} >= 0")
        self.seqs, self.capacity = int(seqs), int(capacity)
        self.region = self.capacity + int(scratch)
        self.pad_base = self.seqs * self.region  # the first pad slot
        shape = (num_layers, kv_heads, self.pad_base + int(pad), head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.lengths = torch.zeros(self.seqs, dtype=torch.long, device=device)
        self.free = list(range(self.seqs))

    @classmethod
    def for_model(cls, cfg, seqs, capacity, dtype, device, scratch=0, pad=0):
        return cls(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, seqs, capacity, dtype, device, scratch,
                   pad)

    def acquire(self, s: int | None = None) -> int:
        """A free region (the first one, or region `s`), its length 0 (its K/V stay as they were: a
        caller reusing a prefix of them sets the length); RuntimeError when all are held."""
        if not self.free:
            raise RuntimeError(f"SlotCache: all {self.seqs} sequence regions are in use")
        if s is None:
            s = self.free[0]
        elif s not in self.free:
            raise ValueError(f"SlotCache.acquire: region {s} is not free")
        self.free.remove(s)
        self.lengths[s] = 0
        return s

    def release(self, s: int):
        if s in self.free or not 0 <= s < self.seqs:
            raise ValueError(f"SlotCache.release: region {s} is not held")
        self.free.append(s)
        self.free.sort()

    def base(self, s: int) -> int:
        """The first slot of region s on the shared slot axis."""
        return s * self.region

    def view(self, s: int) -> KVCache:
        """Region s as a single-sequence KVCache (no copy)."""
        r = slice(self.base(s), self.base(s) + self.region)
        return KVCache.view(self.k[:, :, r], self.v[:, :, r], self.lengths[s], self.capacity)

    def layer(self, i):
        """(K, V) of layer i over every region (and the pad slots): [Hkv, slots, D] views."""
        return self.k[i], self.v[i]

    def write(self, i, k, v, idx):
        """Chunk K/V ([N, Hkv, D]) of layer i to the flat slots `idx` [N] (`forward.write_slots`)."""
        self.k[i].index_copy_(1, idx, k.transpose(0, 1))
        self.v[i].index_copy_(1, idx, v.transpose(0, 1))
