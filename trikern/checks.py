"""Type and range checks for user-facing values: request options and config.json fields.

Each `*_problem` function returns what is wrong with a value (e.g. "expected an integer >= 1") or
None; the caller names the parameter, or the file and the key, so every bad value is one error
that says where it came from. Bools are rejected where numbers are expected (`True` is an int in
Python, but `block_size=True` is a mistake), and NaN / inf are rejected for every real number:
a NaN temperature or threshold compares False against every bound and would otherwise decode
garbage without a word.

`check_block_range` bounds a block size in every mode: the fixed cap (`MAX_BLOCK_SIZE`, or the
checkpoint's own block size when larger) and the context. `check_block_size` adds, for
spec-quadratic and its draft trees, the memory one step needs (`quadratic_step_bytes`) against
`QUADRATIC_BUDGET_BYTES`; the decode context runs it before anything is allocated.
"""
from __future__ import annotations

import math
import numbers

# Twice NLD's trained block size (32; the embedded model's is 8). Past it a diffusion block costs up
# to B-1 forwards and a quadratic step B(B+1) rows for acceptance lengths the model was never trained
# to reach (kernels.verify itself stops at 255 drafts). A checkpoint whose config.json says a larger
# block_size may still use it.
MAX_BLOCK_SIZE = 64
# A spec-quadratic step runs B(B+1) rows at once; past this estimate it is refused with the numbers.
QUADRATIC_BUDGET_BYTES = 4 << 30
# torch.Generator.manual_seed takes a 64-bit value.
SEED_LIMIT = 2**64
# Sampling divides the logits by the temperature: far below this, fp32 overflows into NaN probabilities.
MIN_TEMPERATURE = 1e-6


def _bound_text(lo, hi, lo_open: bool, hi_open: bool) -> str:
    if hi == SEED_LIMIT:
        hi = "2**64"  # not 18446744073709551616
    if lo is not None and hi is not None:
        return f"in {'(' if lo_open else '['}{lo}, {hi}{')' if hi_open else ']'}"
    if lo is not None:
        return f"{'>' if lo_open else '>='} {lo}"
    if hi is not None:
        return f"{'<' if hi_open else '<='} {hi}"
    return ""


def _outside(v, lo, hi, lo_open: bool, hi_open: bool) -> bool:
    if lo is not None and (v <= lo if lo_open else v < lo):
        return True
    return hi is not None and (v >= hi if hi_open else v > hi)


def is_int(v) -> bool:
    """An integer that is not a bool (numpy integers count)."""
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def int_problem(v, lo=None, hi=None, hi_open: bool = False) -> str | None:
    want = f"an integer {_bound_text(lo, hi, False, hi_open)}".rstrip()
    if not is_int(v):
        return f"expected {want}, got {type(v).__name__}"
    if _outside(v, lo, hi, False, hi_open):
        return f"expected {want}"
    return None


def real_problem(v, lo=None, hi=None, lo_open: bool = False, hi_open: bool = False) -> str | None:
    want = f"a finite number {_bound_text(lo, hi, lo_open, hi_open)}".rstrip()
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        return f"expected {want}, got {type(v).__name__}"
    if not math.isfinite(v):
        return f"expected {want}, not {v}"
    if _outside(v, lo, hi, lo_open, hi_open):
        return f"expected {want}"
    return None


def temperature_problem(v) -> str | None:
    want = f"0 (greedy) or a finite number >= {MIN_TEMPERATURE}"
    if not isinstance(v, numbers.Real) or isinstance(v, bool):
        return f"expected {want}, got {type(v).__name__}"
    if not math.isfinite(v):
        return f"expected {want}, not {v}"
    return None if v == 0 or v >= MIN_TEMPERATURE else f"expected {want}"


def bool_problem(v) -> str | None:
    # Only real bools: a JSON "false" string or a 0/1 int is a different (and ambiguous) thing.
    return None if isinstance(v, bool) else f"expected true or false, got {type(v).__name__}"


def check(name: str, v, problem: str | None):
    """Raise one ValueError naming the parameter when `problem` says something is wrong."""
    if problem is not None:
        raise ValueError(f"{name}={v!r}: {problem}")


# -- block size -----------------------------------------------------------------------------------
def max_block_size(cfg) -> int:
    """The largest block a request may use on `cfg`: the cap (or the checkpoint's block size when
    larger), and always less than the context, which must also hold at least one prompt token."""
    return min(max(MAX_BLOCK_SIZE, cfg.block_size), cfg.max_position_embeddings - 1)


def quadratic_step_bytes(cfg, B: int, dtype_bytes: int, attention_slots: int | None = None,
                         nodes: int | None = None) -> dict[str, int]:
    """Estimated memory of one spec-quadratic step at block size B, by part.

    R = B(B+1) rows go through the model at once (a draft tree of `nodes` = N: N(B+1), every node
    with its B masks): their K/V scratch in the cache (every layer), one layer's activations
    (residual and normed hidden, q/k/v, gate/up), and the head on 2B rows (a tree: N + B) in fp32.
    `attention_slots` (cache slots the step attends over) adds the [R, slots + R] boolean mask the
    PyTorch reference attention builds (SDPA on CPU does not materialise the scores; the Triton
    kernel computes the mask from indices).
    """
    N = B if nodes is None else nodes
    R = N * (B + 1)
    parts = {
        "kv_scratch": R * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * 2 * dtype_bytes,
        "activations": R * (2 * cfg.intermediate_size + 2 * cfg.hidden_size
                            + (cfg.num_attention_heads + 2 * cfg.num_key_value_heads) * cfg.head_dim) * dtype_bytes,
        "logits": (N + B) * cfg.vocab_size * 4,
    }
    if attention_slots is not None:
        parts["reference_attention_mask"] = R * (attention_slots + R)
    return parts


def _gib(n: int) -> str:
    return f"{n / 2**30:.2f} GiB"


def check_block_range(cfg, B: int):
    """Refuse a block size over `max_block_size` in any mode (in AR it sizes nothing, but a user who
    asks for 300 has made a mistake worth hearing about)."""
    hi = max_block_size(cfg)
    if B > hi:
        raise ValueError(
            f"block_size={B}: expected at most {hi}: blocks are capped at {MAX_BLOCK_SIZE} (or at the "
            f"checkpoint's block_size, here {cfg.block_size}, when larger) and must be shorter than the "
            f"context ({cfg.max_position_embeddings} tokens)")


def check_block_size(cfg, B: int, mode: str, dtype_bytes: int, attention_slots: int | None = None,
                     nodes: int | None = None):
    """Refuse a block size the mode and the model cannot use, before anything is allocated. `nodes`:
    the node budget of a spec-quadratic draft tree (mode "tree-quadratic"; None: B)."""
    check_block_range(cfg, B)
    if mode not in ("spec-quadratic", "tree-quadratic"):
        return
    N = B if nodes is None else nodes
    parts = quadratic_step_bytes(cfg, B, dtype_bytes, attention_slots, N)
    total = sum(parts.values())
    if total > QUADRATIC_BUDGET_BYTES:
        detail = ", ".join(f"{k} {_gib(v)}" for k, v in parts.items())
        if mode == "tree-quadratic":
            raise ValueError(
                f"tree_nodes={N}, block_size={B}: a spec-quadratic tree step runs N(B+1) = {N * (B + 1)} rows "
                f"and needs about {_gib(total)} ({detail}), over the {_gib(QUADRATIC_BUDGET_BYTES)} budget; "
                f"use fewer tree_nodes, a smaller block_size or mode='spec-linear'")
        raise ValueError(
            f"block_size={B}: a spec-quadratic step runs B(B+1) = {B * (B + 1)} rows and needs about "
            f"{_gib(total)} ({detail}), over the {_gib(QUADRATIC_BUDGET_BYTES)} budget; use a smaller "
            f"block_size or mode='spec-linear'")
