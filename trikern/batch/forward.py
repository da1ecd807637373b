"""One model forward over several sequences' chunks: the varlen batched pass.

The chunks are concatenated into one flat [N] token row (segment b = rows starts[b]..starts[b+1]),
so every op but attention -- embeddings, norms, RoPE at each token's own position, the matmuls --
is the model's single-sequence `forward_hidden` over N rows, unchanged: one matmul per weight for
the whole batch, which is what batching buys when a step is bound by reading weights. Attention
alone needs the segments; `kernels.attention_varlen` gets them as a `Varlen` layout (each segment's
region of the SlotCache and committed length). Concatenation, not a padded [batch, T] tensor, so a
joining sequence's prefill chunk (hundreds of tokens) rides in the same pass as the others'
one-token steps without padding every sequence to its length.
"""
from __future__ import annotations

import torch

from .. import kernels as K
from .cache import SlotCache


def layout(cache: SlotCache, chunks) -> K.Varlen:
    """The Varlen of chunks [(region, committed length, tokens)], in row order."""
    starts = [0]
    for _, _, T in chunks:
        starts.append(starts[-1] + int(T))
    return K.Varlen(starts, [cache.base(s) for s, _, _ in chunks], [n for _, n, _ in chunks], cache.region)


# Built from host lists in one tensor call: a step's layout is a few ints per sequence, and one
# small op per segment would cost more than the numbers.
def positions(segs: K.Varlen, device) -> torch.Tensor:
    """[N]: token t of segment b sits at position lengths[b] + t (a chunk appended at its cache end)."""
    pos = [p for a, e, _, n in map(segs.segment, range(segs.count)) for p in range(n, n + e - a)]
    return torch.tensor(pos, dtype=torch.long, device=device)


def write_slots(segs: K.Varlen, device) -> torch.Tensor:
    """[N]: the flat cache slot each chunk token's K/V is written to (its region's scratch, from the
    committed length on)."""
    idx = [base + p for a, e, base, n in map(segs.segment, range(segs.count)) for p in range(n, n + e - a)]
    return torch.tensor(idx, dtype=torch.long, device=device)


def last_rows(segs: K.Varlen, device) -> torch.Tensor:
    """[B]: the last row of each segment (its next-token logits); every segment must be non-empty."""
    return torch.tensor([segs.starts[b + 1] - 1 for b in range(segs.count)], dtype=torch.long, device=device)


def forward_batch(model, tokens, cache: SlotCache, segs: K.Varlen | K.VarlenDevice, pattern=K.CAUSAL, sub_block=0,
                  write_cache=False, lora=False, logits_index=None, pos=None, return_hidden=False, slots=None):
    """Logits [N, V] (or [len(logits_index), V]) for the flat chunks `tokens` [N] laid out by `segs`.

    Segment b attends to the first lengths[b] entries of its region and to itself under `pattern`
    (the same for every segment); its tokens sit at `pos` (default: lengths[b] + t). With
    `write_cache` its K/V land in its region's slots [lengths[b], lengths[b] + T) (default; or the
    flat `slots` [N]); the caller then commits per sequence (`cache.lengths`) as the single-sequence
    modes do. A `VarlenDevice` layout (batch/graphs.py: no host sync) needs `pos` and, with
    `write_cache`, `slots`.
    """
    device = tokens.device
    if isinstance(segs, K.VarlenDevice):
        if pos is None or (write_cache and slots is None):
            raise ValueError("forward_batch: a VarlenDevice layout needs pos (and slots with write_cache)")
    elif tokens.dim() != 1 or tokens.shape[0] != segs.tokens:
        raise ValueError(f"forward_batch: tokens must be [N={segs.tokens}] (the segments' rows); got "
                         f"{tuple(tokens.shape)}")
    pos = positions(segs, device) if pos is None else pos
    idx = None if not write_cache else write_slots(segs, device) if slots is None else slots

    def attend(i, q, k, v, written=False):
        kc, vc = cache.layer(i)
        if write_cache and not written:
            cache.write(i, k, v, idx)
        return K.attention_varlen(q, k, v, kc, vc, segs, pattern, sub_block, model.scale, backend=model.backend,
                                  chunk_in_cache=write_cache)

    kv = (lambda i: (*cache.layer(i), idx)) if write_cache else None
    return model.output(model.forward_hidden(tokens, pos, attend, lora, kv), logits_index, return_hidden)
