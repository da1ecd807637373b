"""The user-facing model object: `trikern.load(...)` -> Model with generate / stream / chat.

Glue only: loading (trikern.loading), tokenization and chat templates (trikern.tokenizer) and the
decoding loops (trikern.decode) are composed here; stop strings and streaming detokenization are
applied on top of the token stream a decode loop yields.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator, Sequence

import torch

from .decode.common import MODES, DecodeContext, GenerationConfig

DEFAULT_MODEL = Path(__file__).resolve().parent / "assets" / "default"


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated tokens only
    stats: dict = field(default_factory=dict)
    finish_reason: str = "length"  # "stop" (EOS or a stop string) | "length"


class Model:
    def __init__(self, model, tokenizer=None, path: Path | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.path = path
        self.cfg = model.cfg
        self.last_result: GenerationResult | None = None

    @classmethod
    def load(cls, path=None, device=None, dtype=None, backend="auto", lora=None) -> "Model":
        from .loading import load_model  # noqa: PLC0415
        from .tokenizer import Tokenizer  # noqa: PLC0415

        path = Path(path) if path is not None else DEFAULT_MODEL
        if not path.exists():
            raise FileNotFoundError(f"model folder {path} does not exist")
        model = load_model(path, device=device, dtype=dtype, backend=backend, lora=lora)
        tok = Tokenizer.from_dir(path, eos_token_ids=model.cfg.eos_token_ids) if (path / "tokenizer.json").is_file() else None
        return cls(model, tok, path)

    # -- settings -----------------------------------------------------------------------
    def _eos_ids(self) -> tuple[int, ...]:
        ids = set(self.cfg.eos_token_ids)
        if self.tokenizer is not None:
            ids |= set(self.tokenizer.eos_token_ids)
        return tuple(sorted(ids))

    def _gen_config(self, max_new_tokens=256, temperature=0.0, top_k=0, top_p=1.0, seed=None, block_size=None,
                    threshold=0.9, draft_lora=True, thinking_budget=None, cuda_graphs=None) -> GenerationConfig:
        end_think = None
        if thinking_budget is not None and self.tokenizer is not None:
            end_think = self.tokenizer.token_id("</think>")
        return GenerationConfig(max_new_tokens=max_new_tokens, temperature=temperature, top_k=top_k, top_p=top_p,
                                seed=seed, block_size=block_size, threshold=threshold, draft_lora=draft_lora,
                                stop_token_ids=self._eos_ids(), thinking_budget=thinking_budget,
                                end_think_id=end_think, cuda_graphs=cuda_graphs)

    def _encode(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            if self.tokenizer is None:
                raise ValueError(f"prompt is text but {self.path} has no tokenizer.json: pass token ids")
            return self.tokenizer.encode(prompt, add_special_tokens=True)
        ids = list(prompt)
        V = self.cfg.vocab_size
        for i, t in enumerate(ids):
            if not isinstance(t, int) or not 0 <= t < V:
                raise ValueError(f"prompt token ids[{i}] = {t!r}: not an int in [0, {V})")
        return ids

    # -- generation ---------------------------------------------------------------------
    def _pieces(self, prompt, mode, stop, **kw) -> Iterator[str]:
        """Stream text pieces; the finished result lands in self.last_result."""
        from .decode import decode as run_decoder  # noqa: PLC0415
        from .tokenizer import StopStrings  # noqa: PLC0415

        if mode not in MODES:
            raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
        if mode != "ar" and not self.cfg.tri_mode:
            raise ValueError(f"mode={mode!r} needs a tri-mode checkpoint; {self.cfg.model_type} decodes in mode='ar' only")
        gen = self._gen_config(**kw)
        ids = self._encode(prompt)
        device = self.model.embed_tokens.weight.device
        ctx = DecodeContext(self.model, gen, len(ids), mode)
        prompt_ids = torch.tensor(ids, dtype=torch.long, device=device)
        detok = self.tokenizer.detokenizer(skip_special_tokens=True, context_ids=ids) if self.tokenizer else None
        stops = StopStrings(stop) if stop else None
        eos = set(gen.stop_token_ids)
        out_ids: list[int] = []
        text: list[str] = []
        reason = "length"
        steps = run_decoder(ctx, prompt_ids, mode)
        try:
            for chunk in steps:
                out_ids.extend(chunk)
                if chunk and chunk[-1] in eos:
                    reason = "stop"
                if detok is None:
                    continue
                piece = detok.feed(chunk)
                if stops is not None:
                    piece = stops.feed(piece)
                    if stops.stopped:
                        reason = "stop"
                if piece:
                    text.append(piece)
                    yield piece
                if stops is not None and stops.stopped:
                    break
        finally:
            steps.close()
        if detok is not None and not (stops is not None and stops.stopped):
            tail = detok.flush()
            if stops is not None:
                tail = stops.feed(tail) + stops.flush()
            if tail:
                text.append(tail)
                yield tail
        self.last_result = GenerationResult("".join(text), out_ids, ctx.stats.as_dict(), reason)

    def stream(self, prompt, mode="ar", stop: Sequence[str] | None = None, **kw) -> Iterator[str]:
        """Yield text pieces as tokens are committed (multi-byte characters are never split)."""
        yield from self._pieces(prompt, mode, stop, **kw)

    def generate(self, prompt, mode="ar", stop: Sequence[str] | None = None, **kw) -> GenerationResult:
        """`prompt`: raw text (no chat template) or a list of token ids."""
        for _ in self._pieces(prompt, mode, stop, **kw):
            pass
        return self.last_result

    def chat_prompt(self, messages, add_generation_prompt=True, **template_kw) -> list[int]:
        if self.tokenizer is None:
            raise ValueError(f"{self.path} has no tokenizer: chat needs tokenizer.json and a chat template")
        text = self.tokenizer.apply_chat_template(messages, add_generation_prompt=add_generation_prompt, **template_kw)
        return self.tokenizer.encode(text, add_special_tokens=False)

    def chat(self, messages, mode="ar", stop=None, template_kwargs=None, **kw) -> GenerationResult:
        return self.generate(self.chat_prompt(messages, **(template_kwargs or {})), mode, stop, **kw)

    def chat_stream(self, messages, mode="ar", stop=None, template_kwargs=None, **kw) -> Iterator[str]:
        yield from self.stream(self.chat_prompt(messages, **(template_kwargs or {})), mode, stop, **kw)
