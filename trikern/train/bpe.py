"""Byte-level BPE tokenizer training (Hugging Face `tokenizers`) with the tri-mode special tokens.

Special tokens get the lowest ids, in SPECIAL_TOKENS order, so `<|endoftext|>` = 0 and
`<|mask|>` = 3 in every tokenizer trained here.
"""
from __future__ import annotations

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|mask|>", "<think>", "</think>"]


def train_bpe(texts, vocab_size: int = 4096, min_frequency: int = 2) -> Tokenizer:
    """Train on an iterable of strings; deterministic for the same texts in the same order."""
    if vocab_size < len(SPECIAL_TOKENS) + 256:
        raise ValueError(f"vocab_size={vocab_size}: must be at least {len(SPECIAL_TOKENS) + 256} "
                         "(special tokens plus the 256 byte symbols)")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def special_ids(tok: Tokenizer) -> dict[str, int]:
    ids = {t: tok.token_to_id(t) for t in SPECIAL_TOKENS}
    missing = [t for t, i in ids.items() if i is None]
    if missing:
        raise ValueError(f"tokenizer lacks special tokens {missing}")
    return ids
