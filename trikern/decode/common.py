"""What every decoding mode shares: request settings, stats, the context object, prefill.

A mode is a generator `decode(ctx, prompt_ids) -> Iterator[list[int]]` that yields token ids as
they are committed (the last yield ends with the first EOS, if any, and nothing after it) and
fills `ctx.stats`. Host synchronisation happens only between steps, where tokens are yielded.
"""
from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import torch

from ..cache import KVCache
from ..kernels import CAUSAL
from ..sampling import make_generator

MODES = ("ar", "diffusion", "spec-linear", "spec-quadratic")


class ContextLengthError(ValueError):
    """The prompt does not fit the model's context."""


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

    def validate(self):
        if self.max_new_tokens < 0:
            raise ValueError(f"max_new_tokens={self.max_new_tokens}: must be >= 0")
        if self.temperature < 0:
            raise ValueError(f"temperature={self.temperature}: must be >= 0")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p={self.top_p}: must be in (0, 1]")
        if self.top_k < 0:
            raise ValueError(f"top_k={self.top_k}: must be >= 0")
        if self.block_size is not None and self.block_size < 1:
            raise ValueError(f"block_size={self.block_size}: must be >= 1")
        if not 0 <= self.threshold <= 1:
            raise ValueError(f"threshold={self.threshold}: must be in [0, 1]")
        if self.thinking_budget is not None and self.end_think_id is None:
            raise ValueError("thinking_budget needs end_think_id (the tokenizer has no end-of-thinking token)")


@dataclass
class Stats:
    mode: str = "ar"
    prompt_tokens: int = 0
    generated_tokens: int = 0
    prefill_forwards: int = 0
    forwards: int = 0  # NFE after the prefill
    prefill_s: float = 0.0
    decode_s: float = 0.0
    phase_s: dict = field(default_factory=dict)  # time per phase (draft, verify, denoise, ...)
    acceptance_lengths: Counter = field(default_factory=Counter)  # accepted length -> count

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
        }


class DecodeContext:
    """Model, cache, settings, RNG and stats of one generation: what every step needs."""

    def __init__(self, model, gen: GenerationConfig, prompt_len: int, mode: str = "ar"):
        gen.validate()
        cfg = model.cfg
        self.model, self.cfg, self.gen = model, cfg, gen
        self.device = model.embed_tokens.weight.device
        self.dtype = model.embed_tokens.weight.dtype
        self.block_size = gen.block_size or cfg.block_size
        limit = cfg.max_position_embeddings
        if prompt_len < 1:
            raise ValueError("prompt is empty: at least one token is needed")
        if prompt_len >= limit:
            raise ContextLengthError(
                f"prompt has {prompt_len} tokens; the model's context is {limit} "
                f"(max_position_embeddings): at most {limit - 1} prompt tokens leave room to generate"
            )
        # Generation stops at the context end; the cache is sized for exactly what can be committed.
        self.max_new_tokens = min(gen.max_new_tokens, limit - prompt_len)
        B = self.block_size
        scratch = {"spec-quadratic": B * (B + 1), "ar": 1}.get(mode, B)
        capacity = prompt_len + self.max_new_tokens + B  # a final block may overshoot the budget
        self.cache = KVCache.for_model(cfg, capacity, self.dtype, self.device, scratch=scratch)
        self.generator = make_generator(gen.seed, self.device)
        self.stats = Stats(mode=mode, prompt_tokens=prompt_len)

    def sync_time(self) -> float:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        return time.perf_counter()

    def prefill(self, prompt_ids: torch.Tensor) -> torch.Tensor:
        """Causal pass over the prompt; commits its K/V and returns the last position's logits [V]."""
        t0 = self.sync_time()
        n = prompt_ids.shape[0]
        pos = torch.arange(n, device=self.device)
        logits = self.model(prompt_ids, pos, self.cache, CAUSAL, write_cache=True,
                            logits_index=torch.tensor([n - 1], device=self.device))
        self.cache.commit(n)
        self.stats.prefill_forwards += 1
        self.stats.prefill_s += self.sync_time() - t0
        return logits[0]


def finish(tokens: list[int], ctx: DecodeContext, emitted: int) -> tuple[list[int], bool]:
    """Cut a step's tokens at the first EOS (kept) and at the token budget.
    Returns (tokens to yield, whether decoding is done)."""
    eos = set(ctx.gen.stop_token_ids)
    for i, t in enumerate(tokens):
        if t in eos:
            tokens = tokens[: i + 1]
            break
    room = ctx.max_new_tokens - emitted
    done = len(tokens) >= room or (tokens and tokens[-1] in eos)
    return tokens[:room], done
