"""The decoding modes: one strategy class each, and what follows from them -- the mode names, the
speculative families, the (mode, block size) candidates a request may run and the cache it needs.

A new mode is a Strategy subclass (strategies/) listed in STRATEGIES; nothing else names modes.
"""
from __future__ import annotations

from .context import DecodeContext, GenerationConfig
from .strategies.ar import AR
from .strategies.diffusion import Diffusion
from .strategies.spec_linear import LinearSpec
from .strategies.spec_quadratic import QuadraticSpec

STRATEGIES = {cls.mode: cls for cls in (AR, Diffusion, LinearSpec, QuadraticSpec)}
AUTO = "auto"  # the fastest lossless strategy before every step (auto/policy.py)
STEP_MODES = tuple(STRATEGIES)  # one strategy each
MODES = (*STEP_MODES, AUTO)
FAMILIES = tuple(dict.fromkeys(c.family for c in STRATEGIES.values() if c.lossless and c.family))


def strategy(key):
    """The class of a (mode, block size) key."""
    return STRATEGIES[key[0]]


def check_mode(mode: str, cfg) -> str:
    """The one check of a requested mode: a name in MODES, and a checkpoint that can run it."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r}: expected one of {', '.join(MODES)}")
    if mode != AUTO and STRATEGIES[mode].tri_mode and not (cfg.tri_mode and cfg.mask_token_id is not None):
        why = ([] if cfg.tri_mode else [f"{cfg.model_type} is not a tri-mode model type"]) \
            + ([] if cfg.mask_token_id is not None else ["its config has no mask_token_id"])
        plain = " or ".join(repr(m) for m in MODES if m == AUTO or not STRATEGIES[m].tri_mode)
        raise ValueError(f"mode={mode!r} needs a tri-mode checkpoint with a mask token: {' and '.join(why)}; "
                         f"it decodes only in mode {plain}")
    return mode


def candidates(mode: str, block_size: int, cfg) -> list[tuple[str, int]]:
    """The (mode, block size) keys a generation may run; `block_size` caps auto's block sizes.
    Speculative candidates need a tri-mode checkpoint with a mask token."""
    if mode != AUTO:
        return [(mode, 1 if not STRATEGIES[mode].family and STRATEGIES[mode].lossless else block_size)]
    spec = cfg.tri_mode and cfg.mask_token_id is not None
    return [(c.mode, B) for c in STRATEGIES.values() if c.lossless and (spec or not c.tri_mode)
            for B in c.auto_blocks if B <= block_size or not c.family]


def scratch_needed(keys) -> int:
    """The most cache slots past the committed length that a step of any of `keys` writes."""
    return max(STRATEGIES[m].scratch(B) for m, B in keys)


def new_context(model, gen: GenerationConfig, prompt_len: int, mode: str = "ar", reuse=None) -> DecodeContext:
    """A DecodeContext sized for `mode` (its candidates and their scratch slots)."""
    check_mode(mode, model.cfg)
    keys = candidates(mode, gen.block_size or model.cfg.block_size, model.cfg)
    return DecodeContext(model, gen, prompt_len, mode, keys, scratch_needed(keys), reuse=reuse)
