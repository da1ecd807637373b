"""The decoding modes: one strategy class each, and what follows from them -- the mode names, the
speculative families, the (mode, block size) candidates a request may run and the cache it needs.

A new mode is a Strategy subclass (strategies/) listed in STRATEGIES; nothing else names modes.
"""
from __future__ import annotations

from .context import AUTO, DecodeContext, GenerationConfig
from .strategies.ar import AR
from .strategies.diffusion import Diffusion
from .strategies.spec_linear import LinearSpec
from .strategies.spec_quadratic import QuadraticSpec
from .strategies.tree_linear import TreeLinear
from .strategies.tree_quadratic import TreeQuadratic

STRATEGIES = {cls.mode: cls for cls in (AR, Diffusion, LinearSpec, QuadraticSpec, TreeLinear, TreeQuadratic)}
# A strategy with `variant_of` is asked for as that mode plus an option (a draft tree: tree_nodes=N).
TREE_VARIANTS = {c.variant_of: c for c in STRATEGIES.values() if getattr(c, "variant_of", None)}
STEP_MODES = tuple(m for m, c in STRATEGIES.items() if not getattr(c, "variant_of", None))  # one strategy each
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


def check_tree_nodes(mode: str, tree_nodes) -> None:
    """A draft tree is asked for with a self-speculation mode or auto (the value itself is checked by
    GenerationConfig.validate)."""
    if tree_nodes is not None and mode != AUTO and mode not in TREE_VARIANTS:
        raise ValueError(f"tree_nodes={tree_nodes!r}: draft trees are for mode "
                         f"{', '.join(map(repr, TREE_VARIANTS))} or 'auto', not mode={mode!r}")


def candidates(mode: str, block_size: int, cfg, tree_nodes: int | None = None) -> list[tuple[str, int]]:
    """The (mode, block size) keys a generation may run; `block_size` caps auto's block sizes.
    Speculative candidates need a tri-mode checkpoint with a mask token. With `tree_nodes` a
    self-speculation mode runs its draft-tree variant, and auto runs, at the block sizes a tree
    declares (`auto_blocks`), the tree instead of the chain: auto's tree has N <= B nodes, the chain's
    rows or fewer, and accepts at least what the chain does (its top-1 path is the chain), so keeping
    both would only double what auto has to measure and explore in a generation; the chain stays
    at the other block sizes."""
    check_tree_nodes(mode, tree_nodes)
    if mode != AUTO:
        if tree_nodes is not None:
            mode = TREE_VARIANTS[mode].mode
        return [(mode, 1 if not STRATEGIES[mode].family and STRATEGIES[mode].lossless else block_size)]
    spec = cfg.tri_mode and cfg.mask_token_id is not None
    pool = [c for c in STRATEGIES.values() if tree_nodes is not None or not getattr(c, "variant_of", None)]
    treed = {} if tree_nodes is None else {m: set(c.auto_blocks) for m, c in TREE_VARIANTS.items()}
    return [(c.mode, B) for c in pool if c.lossless and (spec or not c.tri_mode)
            for B in c.auto_blocks if (B <= block_size or not c.family) and B not in treed.get(c.mode, ())]


def scratch_needed(keys, gen: GenerationConfig | None = None) -> int:
    """The most cache slots past the committed length that a step of any of `keys` writes (under
    the request's settings `gen`, when given)."""
    return max(STRATEGIES[m].scratch(B) if gen is None else STRATEGIES[m].scratch_for(B, gen) for m, B in keys)


def new_context(model, gen: GenerationConfig, prompt_len: int, mode: str = "ar", reuse=None) -> DecodeContext:
    """A DecodeContext sized for `mode` (its candidates and their scratch slots)."""
    check_mode(mode, model.cfg)
    gen.validate()  # before the settings size anything (tree_nodes picks the strategies)
    keys = candidates(mode, gen.block_size or model.cfg.block_size, model.cfg, gen.tree_nodes)
    nodes = {(m, B): STRATEGIES[m].nodes_for(B, gen.tree_nodes, mode == AUTO) for m, B in keys
             if hasattr(STRATEGIES[m], "nodes_for")}  # a tree's rows per step, for the memory check
    return DecodeContext(model, gen, prompt_len, mode, keys, scratch_needed(keys, gen), reuse=reuse,
                         tree_nodes=nodes)
