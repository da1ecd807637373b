"""The batched decode loop: a changing set of sequences over one SlotCache, one step for all of them.

`BatchDecoder(model, max_batch, mode, block_size)` holds at most `max_batch` sequences in its cache
regions; `add` queues a request, `cancel` drops one (a client that disconnected), and each `step`:

1. admits queued sequences into free regions (in arrival order);
2. gives the joining ones prefill pieces of at most `prefill_chunk` prompt tokens in all, so a long
   prompt is fed over several steps and the sequences already decoding wait about one step for it,
   not for the whole prompt;
3. runs one step of the batch's (mode, block size) (steps.py) for every decoding sequence, the
   prefill pieces riding in its causal pass;
4. passes each sequence's tokens through its emitter (EOS, token budget, thinking budget), and
   releases the region of every sequence that finished.

One (mode, block size) for the whole batch at each step: the decoder's, or with mode="auto" the one
auto.py chooses for the sequences decoding now. A sequence's output
equals its solo run's (the same model math per row and the same RNG draws, tests/test_batch_decode.py).

Prefix reuse (`reuse_prefix=True`, what a server wants: the next turn of a chat): a region keeps
its K/V when its sequence leaves, and `kept` remembers the token ids they hold. A joining sequence
goes to the free region sharing the longest prefix with its prompt and prefills only the rest (at
least its last prompt token, whose logits start the generation); with no shared prefix it takes an
empty region, else the one released longest ago. `adopt` carries those prefixes over to a decoder
made for another mode.
"""
from __future__ import annotations

from typing import Iterator

import time

import torch

from ..checks import check, check_block_size, int_problem
from ..decode.context import GenerationConfig
from ..decode.registry import check_mode
from .auto import AutoBatch
from .cache import SlotCache
from .graphs import BatchGraphs
from .sequence import Sequence
from .steps import STEPS as FIXED

STEPS = {**FIXED, AutoBatch.mode: AutoBatch}  # auto chooses among the fixed kinds per step (auto.py)
MODES = tuple(STEPS)


class BatchDecoder:
    def __init__(self, model, max_batch: int = 4, mode: str = "ar", block_size: int | None = None,
                 context: int | None = None, prefill_chunk: int = 256, draft_lora: bool = True,
                 reuse_prefix: bool = False, cuda_graphs: bool | None = None):
        """`context`: the most tokens (prompt + generated) of one sequence (default: the model's
        max_position_embeddings); every region is sized for it. `reuse_prefix`: see the module doc.
        `cuda_graphs`: replay the decode passes as CUDA graphs per batch bucket (graphs.py; None: on
        when the model is on CUDA)."""
        cfg = model.cfg
        if mode not in STEPS:
            raise ValueError(f"mode={mode!r}: batched decoding runs one of {', '.join(MODES)}")
        for name, value in (("max_batch", max_batch), ("prefill_chunk", prefill_chunk)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}={value!r}: expected an int >= 1")
        limit = cfg.max_position_embeddings
        context = limit if context is None else context
        if not isinstance(context, int) or not 2 <= context <= limit:
            raise ValueError(f"context={context!r}: expected an int in [2, {limit}] (max_position_embeddings)")
        for name, value in (("reuse_prefix", reuse_prefix), ("cuda_graphs", cuda_graphs)):
            if not isinstance(value, bool) and not (name == "cuda_graphs" and value is None):
                raise ValueError(f"{name}={value!r}: expected True or False")
        check_mode(mode, cfg)  # a spec mode needs a tri-mode checkpoint with a mask token
        if block_size is not None:
            check("block_size", block_size, int_problem(block_size, lo=1))
        B = 1 if mode == "ar" else (block_size or cfg.block_size)  # spec-quadratic: B draft tokens, B + 1 wide
        # As a solo request: the range, and a quadratic step's memory (one sequence's; the batch's
        # padded attention scores grow with it, which the CPU backend chunks only per sequence).
        check_block_size(cfg, B, mode, model.embed_tokens.weight.dtype.itemsize)
        self.model, self.cfg = model, cfg
        self.device = model.embed_tokens.weight.device
        self.dtype = model.embed_tokens.weight.dtype
        self.mode, self.B, self.context = mode, B, context
        self.prefill_chunk, self.draft_lora = prefill_chunk, bool(draft_lora)
        on_cuda = self.device.type == "cuda"
        if cuda_graphs and not on_cuda:
            raise ValueError(f"cuda_graphs=True needs the model on a CUDA device (it is on {self.device})")
        self.max_batch = max_batch
        graphed = on_cuda if cuda_graphs is None else cuda_graphs
        self.graphs = BatchGraphs(self) if graphed else None  # steps.py runs its passes through it
        self.step_kind = STEPS[mode](self, B)
        # A final step may commit up to B tokens past the budget, and a step writes its scratch; a
        # graphed pass's padding rows write pad slots (at most a step's scratch per sequence).
        scratch = STEPS[mode].scratch(B)
        self.cache = SlotCache.for_model(cfg, max_batch, context + B, self.dtype, self.device, scratch=scratch,
                                         pad=BatchGraphs.pad_slots(max_batch, scratch) if graphed else 0)
        self.queue: list[Sequence] = []
        # Requests waiting for a region in a queue of the caller's (trikern serve's engine admits a
        # request only when a region is free): batched auto chooses as if they were in `queue`.
        self.waiting_elsewhere = 0
        self.active: list[Sequence] = []
        self.steps = 0
        self.batch_sizes: dict[int, int] = {}  # decoding sequences per step -> steps
        # Wall seconds of the steps: those with prefill pieces, and the others by how many sequences
        # they decoded (a benchmark's users leave one by one: its steps with fewer than all of them).
        self.prefill_seconds = 0.0
        self.decode_seconds: dict[int, float] = {}
        self.prefill_tokens = 0  # prompt tokens fed by prefill passes (a reused prefix is not)
        self.reuse_prefix = reuse_prefix
        # Free region -> the token ids its first entries hold, oldest release first (reuse_prefix only).
        self.kept: dict[int, list[int]] = {}

    # -- joining and leaving ---------------------------------------------------------------
    def add(self, prompt_ids, gen: GenerationConfig | None = None, ident=None, **kw) -> Sequence:
        """Queue a generation (`gen`, or GenerationConfig(**kw)); it joins at the next step with a free
        region. Settings the batch fixes for every sequence are refused here, by name."""
        gen = GenerationConfig(**kw) if gen is None else gen
        ids = prompt_ids.tolist() if torch.is_tensor(prompt_ids) else list(prompt_ids)
        for name, ok in (("block_size", gen.block_size in (None, self.B) or self.mode == "ar"),
                         ("tree_nodes", gen.tree_nodes is None),
                         ("cuda_graphs", gen.cuda_graphs in (None, self.graphs is not None)),
                         ("draft_lora", gen.draft_lora == self.draft_lora or self.mode == "ar")):
            if not ok:
                raise ValueError(f"{name}={getattr(gen, name)!r}: a batched decoder runs one setting for every "
                                 f"sequence (mode={self.mode!r}, block_size={self.B}, draft_lora={self.draft_lora}, "
                                 f"cuda_graphs={self.graphs is not None}); "
                                 f"per-sequence {name} is not supported")
        for i, t in enumerate(ids):
            if not 0 <= int(t) < self.cfg.vocab_size:
                raise ValueError(f"prompt_ids[{i}]={t!r}: expected a token id in [0, {self.cfg.vocab_size})")
        seq = Sequence(ids, gen, self.context, self.mode, self.device, ident)
        if not seq.done:
            self.queue.append(seq)
        return seq

    def cancel(self, seq: Sequence):
        """Drop a sequence (queued or active) before it finishes; its region is freed."""
        if seq in self.queue:
            self.queue.remove(seq)
        if seq in self.active:
            self._leave(seq)
        seq.done = True

    def _leave(self, seq: Sequence):
        self.active.remove(seq)
        self.cache.release(seq.slot)
        if self.reuse_prefix and seq.length:
            # Committed entries are the prompt and every token produced but the newest (steps commit
            # between steps only), so their ids are a prefix of prompt + emitted.
            self.kept[seq.slot] = (seq.prompt + seq.tokens)[:seq.length]
        seq.slot = None

    def _admit(self, seq: Sequence):
        """Give a queued sequence a region (its longest kept prefix, if any) and start its prefill."""
        slot, n = self._region_for(seq.prompt)
        seq.slot = self.cache.acquire(slot)
        self.kept.pop(slot, None)
        self.active.append(seq)
        seq.t_join = time.perf_counter()
        self.step_kind.admit(seq)
        n = min(n, seq.prefill_len - 1)  # feed at least one token: the pass that ends the prefill
        if n > 0:
            seq.fed = seq.length = seq.stats.cached_tokens = n
            self.cache.lengths[slot] = n

    def _region_for(self, prompt: list[int]) -> tuple[int, int]:
        """(free region, prompt tokens its kept ids share): the longest shared prefix; else an empty
        region; else the one released longest ago."""
        best, n = None, 0
        for s, ids in self.kept.items():
            k = next((i for i, (a, b) in enumerate(zip(ids, prompt)) if a != b), min(len(ids), len(prompt)))
            if k > n:
                best, n = s, k
        if best is None:
            empty = [s for s in self.cache.free if s not in self.kept]
            best = empty[0] if empty else next(iter(self.kept))
        return best, n

    def adopt(self, other: "BatchDecoder"):
        """Copy the prefixes `other`'s free regions keep into this decoder's empty regions (the most
        recent ones when they do not all fit): a decoder made for another mode or block size then
        reuses them as `other` would have. Both decoders run the same model."""
        if not self.reuse_prefix:
            return
        empty = [s for s in self.cache.free if s not in self.kept]
        items = list(other.kept.items())[-len(empty):] if empty else []
        for (src, ids), dst in zip(items, empty):
            n = min(len(ids), self.context)
            a, b = other.cache.base(src), self.cache.base(dst)
            self.cache.k[:, :, b:b + n].copy_(other.cache.k[:, :, a:a + n])
            self.cache.v[:, :, b:b + n].copy_(other.cache.v[:, :, a:a + n])
            self.kept[dst] = ids[:n]

    @property
    def busy(self) -> bool:
        return bool(self.queue or self.active)

    # -- the loop ------------------------------------------------------------------------
    @torch.inference_mode()
    def step(self) -> dict[Sequence, list[int]]:
        """One step for the whole batch: {sequence: tokens it yields now} (a finished sequence has
        `done` set and has left the batch)."""
        t0 = time.perf_counter()
        while self.queue and self.cache.free:
            self._admit(self.queue.pop(0))
        decoding = [s for s in self.active if s.decoding]
        prefill, budget = [], self.prefill_chunk
        for s in self.active:
            if s.prefilling and budget > 0:
                T = min(budget, s.prefill_len - s.fed)
                prefill.append((s, T))
                budget -= T
        if not decoding and not prefill:
            return {}
        need = self.step_kind.scratch(self.B)
        for s in decoding + [s for s, _ in prefill]:
            if s.length + need > self.cache.region:
                raise RuntimeError(f"SlotCache region too small: a {self.B}-token step at length {s.length} "
                                   f"needs more than its {self.cache.region} slots (BatchDecoder sizing bug)")
        produced = self.step_kind.run(decoding, prefill)
        self.prefill_tokens += sum(T for _, T in prefill)
        self.steps += 1
        self.batch_sizes[len(decoding)] = self.batch_sizes.get(len(decoding), 0) + 1
        out = {}
        for s, tokens in produced.items():
            if s in decoding:
                s.stats.forwards += self.step_kind.forwards
                if self.step_kind.speculative:  # speculative steps only, as a solo run records
                    s.stats.acceptance_lengths[len(tokens)] += 1
            else:
                s.stats.prefill_forwards += 1
            out[s], forced = s.emit(tokens)
            if s.done:
                self._leave(s)
            elif forced:  # thinking budget: the end-think token replaced the last one produced
                s.length = s.emitter.cache_length()
                self.cache.lengths[s.slot] = s.length
                self.step_kind.restart(s, torch.full((1,), s.gen.end_think_id, device=self.device))
            else:
                s.pending = torch.tensor(tokens[-1:], device=self.device)
        for s, _ in prefill:
            if s not in produced:
                s.stats.prefill_forwards += 1
        if not self.busy:
            self.step_kind.drained()
        spent = time.perf_counter() - t0
        if prefill:
            self.prefill_seconds += spent
        else:
            self.decode_seconds[len(decoding)] = self.decode_seconds.get(len(decoding), 0.0) + spent
        return out

    def run(self) -> Iterator[dict[Sequence, list[int]]]:
        """Steps until every queued and active sequence is done (more may be added between steps)."""
        while self.busy:
            yield self.step()


def generate_batch(model, prompts, mode="ar", max_batch=4, block_size=None, **kw) -> list[list[int]]:
    """The token ids each prompt generates, decoded together `max_batch` at a time (the rest queue)."""
    prompts = [p.tolist() if torch.is_tensor(p) else list(p) for p in prompts]
    # Regions for these prompts and budget, not the model's whole context (a 262k-token NLD context
    # times max_batch regions would not fit a GPU); the budget is cut to the context as solo.
    limit = model.cfg.max_position_embeddings
    gen = kw.get("gen")
    new = gen.max_new_tokens if gen is not None else kw.get("max_new_tokens", GenerationConfig.max_new_tokens)
    want = max(map(len, prompts), default=1) + new
    dec = BatchDecoder(model, max_batch, mode, block_size, context=max(2, min(limit, want)))
    seqs = [dec.add(p, **kw) for p in prompts]
    for _ in dec.run():
        pass
    return [s.tokens for s in seqs]
