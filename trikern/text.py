"""One generation's text: the token ids a decoder yields -> streamed text pieces, stop strings,
finish_reason, and the final `GenerationResult`.

Shared by `Model.stream` (api.py, one generation on the Model's cache) and the server's batched
engine (serve/batch_engine.py, many generations in one BatchDecoder), so that the text, the stop
handling and the result of a request are the same whichever decoder produced its tokens. The
caller owns the loop: it feeds each step's tokens, stops decoding when `stopped` says so, and calls
`flush` then `result` when the generation ends. No torch, no decoder here.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence


@dataclass
class GenerationResult:
    text: str
    token_ids: list[int]  # generated tokens only
    stats: dict = field(default_factory=dict)
    finish_reason: str = "length"  # "stop" (EOS or a stop string) | "length" | "cancelled" (should_stop, close)


class TextEmitter:
    """Incremental detokenization (multi-byte characters are never split), stop strings and the
    finish reason of one generation. `tokenizer` None: token ids only (no text, no stop strings)."""

    def __init__(self, tokenizer, prompt_ids: Sequence[int], eos_ids, stops=None):
        """`stops`: a `tokenizer.StopStrings` with at least one stop string, or None."""
        self.detok = tokenizer.detokenizer(skip_special_tokens=True, context_ids=prompt_ids) if tokenizer else None
        self.eos = set(eos_ids)
        self.stops = stops
        self.token_ids: list[int] = []
        self.text: list[str] = []
        self.reason = "length"

    @property
    def stopped(self) -> bool:
        """A stop string matched: decoding should end now (later tokens are ignored)."""
        return self.stops is not None and self.stops.stopped

    def feed(self, tokens: list[int]) -> str:
        """One step's tokens -> the text that is safe to stream now ("" when none)."""
        self.token_ids.extend(tokens)
        if tokens and tokens[-1] in self.eos:
            self.reason = "stop"
        if self.detok is None:
            return ""
        piece = self.detok.feed(tokens)
        if self.stops is not None:
            piece = self.stops.feed(piece)
            if self.stops.stopped:
                self.reason = "stop"
        if piece:
            self.text.append(piece)
        return piece

    def cancel(self):
        """The generation was stopped from outside (a client left, the stream was closed)."""
        self.reason = "cancelled"

    def flush(self) -> str:
        """At the end: the text held back (an incomplete character or stop-string prefix), unless a stop
        string matched. It is part of the result's text whether or not the caller streams it."""
        if self.detok is None or self.stopped:
            return ""
        tail = self.detok.flush()
        if self.stops is not None:
            tail = self.stops.feed(tail) + self.stops.flush()
        if tail:
            self.text.append(tail)
        return tail

    def result(self, stats: dict) -> GenerationResult:
        return GenerationResult("".join(self.text), self.token_ids, stats, self.reason)
