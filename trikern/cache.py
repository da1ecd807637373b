"""The one static KV cache shared by every decoding mode.

Preallocated [layers, kv_heads, slots, head_dim] for K and V, written by index. `length` is a
0-dim int64 tensor on the cache's device, so a decode step can append, truncate or compact without
a host synchronisation (and can be captured as a CUDA graph). Slots past `length` are scratch: a
pass that writes the cache puts its chunk there first; the decode loop then commits a prefix
(`commit`), or `kernels.verify` gathers the accepted entries into place and advances `length`. A
pass that does not write the cache (draft, denoise) only reads it.
"""
from __future__ import annotations

import torch


class KVCache:
    def __init__(self, num_layers, kv_heads, head_dim, capacity, dtype, device, scratch=0):
        """`capacity` committed tokens plus `scratch` slots for the widest uncommitted chunk."""
        self.capacity = int(capacity)
        self.slots = int(capacity) + int(scratch)
        shape = (num_layers, kv_heads, self.slots, head_dim)
        self.k = torch.zeros(shape, dtype=dtype, device=device)
        self.v = torch.zeros(shape, dtype=dtype, device=device)
        self.length = torch.zeros((), dtype=torch.long, device=device)

    @classmethod
    def for_model(cls, cfg, capacity, dtype, device, scratch=0):
        return cls(cfg.num_hidden_layers, cfg.num_key_value_heads, cfg.head_dim, capacity, dtype, device, scratch)

    @classmethod
    def keeping(cls, old: "KVCache", n: int, capacity: int, scratch: int) -> "KVCache":
        """A cache for `capacity` + `scratch` slots whose first `n` entries are `old`'s (a reused
        prompt prefix): `old` itself when it is large enough, else a larger copy."""
        if old.slots >= capacity + scratch:
            old.capacity = old.slots - scratch
            new = old
        else:
            L, H, _, D = old.k.shape
            new = cls(L, H, D, capacity, old.k.dtype, old.k.device, scratch)
            new.k[:, :, :n] = old.k[:, :, :n]
            new.v[:, :, :n] = old.v[:, :, :n]
        new.truncate(n)
        return new

    @classmethod
    def view(cls, k: torch.Tensor, v: torch.Tensor, length: torch.Tensor, capacity: int) -> "KVCache":
        """A cache over existing storage: `k` / `v` [layers, kv_heads, slots, head_dim] views (a
        batched cache's region of one sequence, trikern/batch/cache.py) and `length` a 0-dim view of
        its committed length. Writes, commits and truncations land in the storage viewed."""
        new = cls.__new__(cls)
        new.k, new.v, new.length = k, v, length
        new.capacity, new.slots = int(capacity), k.shape[2]
        return new

    def layer(self, i):
        """(K, V) of layer i: [Hkv, slots, D] views."""
        return self.k[i], self.v[i]

    def scratch_slots(self, T: int) -> torch.Tensor:
        """Slot indices [length, length + T) of a T-token chunk (computed once per forward)."""
        return self.length + torch.arange(T, device=self.length.device)

    def write(self, i, k, v, idx):
        """Write chunk K/V ([T, Hkv, D], the cache's dtype) of layer i to the slots `idx` (from `scratch_slots`)."""
        self.k[i].index_copy_(1, idx, k.transpose(0, 1))
        self.v[i].index_copy_(1, idx, v.transpose(0, 1))

    def commit(self, count):
        """Make the first `count` scratch entries part of the cache (append / truncate-to-accepted)."""
        self.length += count

    def truncate(self, length):
        self.length.fill_(length) if not torch.is_tensor(length) else self.length.copy_(length)
