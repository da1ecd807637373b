"""CUDA graphs for the batched decode passes: one graph per (pass, batch bucket), replayed with each
step's sequences copied into its static inputs.

A batched step of D decoding sequences runs passes over D chunks of C rows each (AR: the pending
token; spec-linear's draft and verify passes and diffusion's denoise passes: its block B;
spec-quadratic: B sub-blocks of B + 1). On a GPU such a pass is hundreds of kernel launches, whose
cost at the few sequences an edge server runs is a large share of the step. `BatchGraphs` pads D up
to a bucket (1, 2, 4, 8, then multiples of 8, and max_batch) and runs the pass from static tensors
alone (`device_pass`), so one capture per (pass, bucket) replays for any D sequences of that
bucket, in any cache regions, at any lengths:

- inputs: tokens [bucket * C] and meta [bucket + 1] = (each sequence's cache region, padded with
  region 0; D). Positions (each chunk row's offset past the committed length: a pass's constant),
  the slots the K/V go to and the attention layout (a `VarlenDevice`) are computed on the device
  from `SlotCache.lengths`, which a replay reads as they are then.
- padding: the rows of sequences past D are outside every attention segment (their attention
  output is zeros), write their K/V to the cache's pad slots (no region's), and are dropped.
- outputs: the logits of chunk rows [lo, hi) of every real sequence, or every row's hidden state,
  copied out (the next replay overwrites the graph's own).

The first call of a (pass, bucket) runs eagerly (it tunes kernels), the second captures, the rest
replay; the graphs share one memory pool. A capture that fails says why once, and the decoder runs
its passes eagerly from then on. Not graphed: a step's prefill chunks (their lengths vary: a step
carrying them runs eagerly), a quadratic step with a sequence that restarted (its draft is
shorter), and the per-sequence verify, sampling and commit ops after a pass (a few launches each).
`capture=False` runs the same static path without graphs, on any device: what a replay computes,
which the CPU tests hold to the eager path's tokens.
"""
from __future__ import annotations

import warnings
from collections import Counter

import torch

from .. import kernels as K
from .. import warmup
from .forward import forward_batch


def buckets(max_batch: int) -> list[int]:
    """The batch sizes a pass is padded to: 1, 2, 4, 8, 16, 24, ... below max_batch, and max_batch."""
    return sorted({b for b in (1, 2, 4) if b < max_batch} | set(range(8, max_batch, 8)) | {max_batch})


def device_pass(model, cache, tokens, meta, offsets, rows, pattern, sub_block: int, write_cache: bool, lora: bool):
    """A pass from device tensors only (capturable): tokens [bucket * C] (C chunk rows a sequence),
    meta [bucket + 1] = (regions, D), `offsets` [C] each chunk row's position past the sequence's
    committed length (the K/V of row t go to slot n + t). `rows` (lo, hi): the logits of chunk rows
    lo .. hi-1 of every sequence, [bucket * (hi - lo), V]; None: the hidden states of every row."""
    Bk, C, dev = meta.shape[0] - 1, offsets.shape[0], tokens.device
    slots, count = meta[:Bk], meta[Bk:]
    seqs, r = torch.arange(Bk, device=dev), torch.arange(Bk * C, device=dev)
    seg, t = r // C, r % C
    n = cache.lengths.index_select(0, slots)
    real = seqs < count
    base = slots * cache.region
    starts = torch.minimum(torch.arange(Bk + 1, device=dev) * C, count * C)
    segs = K.VarlenDevice(starts, base, torch.where(real, n, 0), cache.region, C)
    idx = torch.where(real[seg], base[seg] + n[seg] + t, cache.pad_base + r) if write_cache else None
    index = None if rows is None else (seqs[:, None] * C + torch.arange(*rows, device=dev)[None, :]).reshape(-1)
    return forward_batch(model, tokens, cache, segs, pattern, sub_block, write_cache=write_cache, lora=lora,
                         logits_index=index, pos=n[seg] + offsets[t], slots=idx, return_hidden=rows is None)


class BatchGraphs:
    def __init__(self, dec, capture: bool = True):
        """`dec`: the BatchDecoder (its model, max_batch, and a cache with `pad_slots` pad slots)."""
        self.dec, self.capture = dec, capture
        self.buckets = buckets(dec.max_batch)
        self.static: dict = {}  # (pass, bucket) -> its input tensors (tokens, meta, offsets, host meta)
        self.graphs: dict = {}  # (pass, bucket) -> (graph, its output: logits or hidden states)
        self.calls: Counter = Counter()
        self.pool = None
        self.enabled = True

    @staticmethod
    def pad_slots(max_batch: int, C: int) -> int:
        """Pad slots the cache needs for passes of up to C chunk rows per sequence."""
        return max_batch * C

    def bucket(self, D: int) -> int:
        return next(b for b in self.buckets if b >= D)

    def __call__(self, name, tokens, regions, offsets, rows, pattern, sub_block=0, write_cache=False, lora=False):
        """What `device_pass` gives for D sequences' chunks `tokens` [D * C] (sequence i's in cache
        region `regions[i]`; `offsets` [C] a host list), as `forward_batch` gives it: logits
        [D * (hi - lo), V] of the chunk rows `rows` = (lo, hi), or the hidden states [D * C, H]."""
        D, dec, C = len(regions), self.dec, len(offsets)
        key = (name, tuple(offsets), rows, int(pattern), sub_block, write_cache, lora, self.bucket(D))
        Bk = key[-1]
        static = self.static.get(key)
        if static is None:
            pinned = dec.device.type == "cuda"
            static = self.static[key] = (torch.zeros(Bk * C, dtype=torch.long, device=dec.device),
                                         torch.zeros(Bk + 1, dtype=torch.long, device=dec.device),
                                         torch.tensor(offsets, dtype=torch.long, device=dec.device),
                                         torch.zeros(Bk + 1, dtype=torch.long, pin_memory=pinned))
        s_tokens, s_meta, s_offsets, h_meta = static
        s_tokens[:D * C].copy_(tokens)  # padding rows keep earlier tokens: any id will do
        # Through a pinned buffer, asynchronously: a copy from pageable memory would wait for the
        # device, mid-step (spec-linear's verify after its draft). The last copy from this buffer
        # ended with an earlier step's host read, so it is free to refill.
        h_meta.copy_(torch.tensor(list(regions) + [0] * (Bk - D) + [D]))
        s_meta.copy_(h_meta, non_blocking=True)

        def run():
            return device_pass(dec.model, dec.cache, s_tokens, s_meta, s_offsets, rows, pattern, sub_block,
                               write_cache, lora)

        if not (self.capture and self.enabled):
            out = run()
        elif key in self.graphs:
            graph, out = self.graphs[key]
            graph.replay()
        else:
            self.calls[key] += 1
            warmup.bump()
            out = run() if self.calls[key] == 1 else self._capture(key, run)
        return out[:D * (C if rows is None else rows[1] - rows[0])].clone()

    def _capture(self, key, run):
        graph = torch.cuda.CUDAGraph()
        torch.cuda.synchronize()
        try:
            with torch.cuda.graph(graph, pool=self.pool):
                out = run()
        except RuntimeError as e:
            why = str(e).splitlines()[0] if str(e) else type(e).__name__
            warnings.warn(f"CUDA graph capture of a batched pass failed ({why}); running batched passes eagerly",
                          RuntimeWarning, stacklevel=4)
            self.enabled = False
            return run()
        self.pool = graph.pool()
        self.graphs[key] = (graph, out)
        graph.replay()
        return out
