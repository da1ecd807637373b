"""The context of one generation: its settings (`GenerationConfig`), its stats (`Stats`), and the
`DecodeContext` that every step reads -- model, cache, RNG -- sized for the strategies the
generation may run (registry.plan computes those; this module knows no mode).

Host synchronisation happens only between steps, where tokens are yielded (driver.py).
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..cache import KVCache
from ..checks import (SEED_LIMIT, bool_problem, check, check_block_size, int_problem, real_problem,
                      temperature_problem)
from ..kernels import CAUSAL, use_triton
from ..kernels.tree import MAX_NODES
from ..sampling import make_generator

AUTO = "auto"  # the mode that picks the fastest lossless strategy before every step (auto/policy.py)


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context."""


def check_prompt_length(n: int, limit: int, context: str = "the model's context is {limit} (max_position_embeddings)"):
    """ContextLengthError unless a prompt of `n` tokens leaves room to generate within `limit` tokens;
    `context` names that limit in the message."""
    if n >= limit:
        raise ContextLengthError(f"prompt has {n} tokens; {context.format(limit=limit)}: at most {limit - 1} "
                                 f"prompt tokens leave room to generate")


@dataclass
class GenerationConfig:
    max_new_tokens: int = 256
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int | None = None
    block_size: int | None = None  # None: the checkpoint's block_size
    threshold: float = 0.9  # diffusion reveal threshold
    draft_lora: bool = True  # use the draft adapter (if loaded) on draft passes
    stop_token_ids: tuple[int, ...] = ()  # EOS ids; emitted, then decoding stops
    thinking_budget: int | None = None  # force `end_think_id` once this many tokens were generated
    end_think_id: int | None = None
    cuda_graphs: bool | None = None  # capture block-mode steps as CUDA graphs (None: on when on CUDA)
    tree_nodes: int | None = None  # self-speculation verifies a draft tree of this many nodes (None: the chain)

    def validate(self):
        """One ValueError naming the first bad setting (type, range, NaN / inf); run once per request."""
        for name, problem in (
            ("max_new_tokens", int_problem(self.max_new_tokens, lo=0)),
            ("temperature", temperature_problem(self.temperature)),
            ("top_k", int_problem(self.top_k, lo=0)),
            ("top_p", real_problem(self.top_p, lo=0, hi=1, lo_open=True)),
            ("seed", None if self.seed is None else int_problem(self.seed, lo=0, hi=SEED_LIMIT, hi_open=True)),
            ("block_size", None if self.block_size is None else int_problem(self.block_size, lo=1)),
            ("threshold", real_problem(self.threshold, lo=0, hi=1)),
            ("draft_lora", bool_problem(self.draft_lora)),
            ("thinking_budget", None if self.thinking_budget is None else int_problem(self.thinking_budget, lo=0)),
            ("end_think_id", None if self.end_think_id is None else int_problem(self.end_think_id, lo=0)),
            ("cuda_graphs", None if self.cuda_graphs is None else bool_problem(self.cuda_graphs)),
            ("tree_nodes", None if self.tree_nodes is None else int_problem(self.tree_nodes, lo=1, hi=MAX_NODES)),
        ):
            check(name, getattr(self, name), problem)
        if not isinstance(self.stop_token_ids, (tuple, list)):
            raise ValueError(f"stop_token_ids={self.stop_token_ids!r}: expected a tuple of token ids")
        for i, t in enumerate(self.stop_token_ids):
            check(f"stop_token_ids[{i}]", t, int_problem(t, lo=0))
        if self.thinking_budget is not None and self.end_think_id is None:
            raise ValueError("thinking_budget needs end_think_id (the tokenizer has no end-of-thinking token)")


@dataclass
class Stats:
    mode: str = "ar"
    prompt_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens whose K/V were reused from the previous generation
    generated_tokens: int = 0
    prefill_forwards: int = 0
    forwards: int = 0  # NFE after the prefill
    prefill_s: float = 0.0
    decode_s: float = 0.0
    phase_s: dict = field(default_factory=dict)  # time per phase (draft, verify, denoise, ...)
    acceptance_lengths: Counter = field(default_factory=Counter)  # tokens per spec step -> count
    by_strategy: dict = field(default_factory=dict)  # "mode/B" -> steps, tokens, forwards, seconds
    switches: int = 0  # strategy changes between steps (mode="auto")
    tree_nodes: int | None = None  # the draft-tree budget asked for (None: chains)

    def record(self, key, tokens: int, forwards: int, seconds: float, spec: bool):
        """One step of strategy `key` = (mode, block size): `tokens` produced before the EOS /
        budget cut."""
        self.forwards += forwards
        if spec:
            self.acceptance_lengths[tokens] += 1
        row = self.by_strategy.setdefault(f"{key[0]}/{key[1]}", dict(steps=0, tokens=0, forwards=0, seconds=0.0))
        row["steps"] += 1
        row["tokens"] += tokens
        row["forwards"] += forwards
        row["seconds"] += seconds

    @property
    def tokens_per_forward(self) -> float:
        return self.generated_tokens / self.forwards if self.forwards else 0.0

    @property
    def tokens_per_second(self) -> float:
        return self.generated_tokens / self.decode_s if self.decode_s > 0 else 0.0

    @property
    def prefill_tokens_per_second(self) -> float:
        return self.prompt_tokens / self.prefill_s if self.prefill_s > 0 else 0.0

    @property
    def mean_acceptance_length(self) -> float:
        n = sum(self.acceptance_lengths.values())
        return sum(k * c for k, c in self.acceptance_lengths.items()) / n if n else 0.0

    def add_time(self, phase: str, seconds: float):
        self.phase_s[phase] = self.phase_s.get(phase, 0.0) + seconds

    def as_dict(self) -> dict:
        return {
            "mode": self.mode,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "generated_tokens": self.generated_tokens,
            "prefill_forwards": self.prefill_forwards,
            "forwards": self.forwards,
            "tokens_per_forward": round(self.tokens_per_forward, 4),
            "tokens_per_second": round(self.tokens_per_second, 3),
            "prefill_tokens_per_second": round(self.prefill_tokens_per_second, 3),
            "prefill_s": round(self.prefill_s, 6),
            "decode_s": round(self.decode_s, 6),
            "phase_s": {k: round(v, 6) for k, v in self.phase_s.items()},
            "acceptance_lengths": {int(k): v for k, v in sorted(self.acceptance_lengths.items())},
            "mean_acceptance_length": round(self.mean_acceptance_length, 4),
            "strategies": {k: {**v, "seconds": round(v["seconds"], 6)} for k, v in self.by_strategy.items()},
            "switches": self.switches,
            "tree_nodes": self.tree_nodes,
        }


class DecodeContext:
    """Model, cache, settings, RNG and stats of one generation: what every step needs."""

    def __init__(self, model, gen: GenerationConfig, prompt_len: int, mode: str, candidates, scratch: int,
                 reuse: tuple[KVCache, int] | None = None, tree_nodes: dict | None = None):
        """`candidates`: the (mode, block size) keys this generation may run, `scratch`: the most
        cache slots one of their steps writes past the committed length (registry.new_context
        computes both). `reuse` = (cache, n): the first n prompt tokens' K/V are already in `cache`
        (the previous generation's, e.g. the earlier turns of a chat); only the rest is prefilled.
        `tree_nodes`: the node budget of each draft-tree key (its step's rows, for the memory check)."""
        gen.validate()
        cfg = model.cfg
        self.model, self.cfg, self.gen = model, cfg, gen
        self.device = model.embed_tokens.weight.device
        self.dtype = model.embed_tokens.weight.dtype
        self.block_size = gen.block_size or cfg.block_size
        limit = cfg.max_position_embeddings
        if prompt_len < 1:
            raise ValueError("prompt is empty: at least one token is needed")
        check_prompt_length(prompt_len, limit)
        # Generation stops at the context end; the cache is sized for exactly what can be committed.
        self.max_new_tokens = min(gen.max_new_tokens, limit - prompt_len)
        self.candidates = list(candidates)
        B = max(b for _, b in self.candidates)
        capacity = prompt_len + self.max_new_tokens + B  # a final block may overshoot the budget
        # Before allocating: the PyTorch reference attention (no Triton) materialises [rows, slots] masks.
        ref_slots = None if use_triton(model.backend, model.embed_tokens.weight) else capacity + scratch
        for m, b in self.candidates:
            check_block_size(cfg, b, m, self.dtype.itemsize, attention_slots=ref_slots,
                             nodes=(tree_nodes or {}).get((m, b)))
        # At least the last prompt token is fed again: its logits start the generation.
        self.reused = 0 if reuse is None else max(0, min(int(reuse[1]), prompt_len - 1))
        if self.reused:
            self.cache = KVCache.keeping(reuse[0], self.reused, capacity, scratch)
        else:
            self.cache = KVCache.for_model(cfg, capacity, self.dtype, self.device, scratch=scratch)
        self.generator = make_generator(gen.seed, self.device)
        self.stats = Stats(mode=mode, prompt_tokens=prompt_len, cached_tokens=self.reused,
                           tree_nodes=gen.tree_nodes)

    def sync_time(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor | None:
        """Causal pass over the prompt tokens not in the cache yet (all but a reused prefix); commits
        their K/V and returns the last position's logits [V] (None when nothing was left to feed)."""
        ids = prompt_ids[self.reused:]
        n = ids.shape[0]
        if n == 0:
            return None
        pos = torch.arange(self.reused, self.reused + n, device=self.device)
        logits = self.model(ids, pos, self.cache, CAUSAL, write_cache=True,
                            logits_index=torch.tensor([n - 1], device=self.device))
        self.cache.commit(n)
        return logits[0]
