"""Batched decoding: several sequences at once over one cache, joining and leaving between steps.

- `cache.py`: `SlotCache`, a static KV cache of S sequence regions, each with its own length.
- `forward.py`: `forward_batch`, one model forward over several sequences' chunks (varlen).
- `steps.py`: the batched steps of each mode (AR, block diffusion, linear and quadratic
  self-speculation).
- `sequence.py`: one generation inside the batch (its region, emitter, RNG).
- `driver.py`: `BatchDecoder`, the loop over a changing set of sequences.

This package sits above trikern/decode (it reuses its settings, emitter and sampling helpers);
nothing below imports it.
"""
from .cache import SlotCache
from .driver import BatchDecoder, generate_batch
from .sequence import Sequence
from .forward import forward_batch

__all__ = ["BatchDecoder", "Sequence", "SlotCache", "forward_batch", "generate_batch"]
