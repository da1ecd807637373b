"""`trikern bench`: the options of the prompt-set and synthetic benches (trikern/bench/), checked
before anything slow runs; every bad option is one `trikern bench: error: ...` line and exit 2."""
from __future__ import annotations

import sys
from pathlib import Path

from ..bench import BenchError, run_prompt_set, run_synthetic
from ..decode import MODES
from ..kernels.dispatch import BACKENDS

DESCRIPTION = "`trikern bench`: decoding speed over a prompt set, or a config's shape against the bandwidth roofline."
DEFAULT_WIDTHS = (1, 8, 32, 72)  # AR, spec verify at B = 8 and 32, a quadratic step at B = 8
SYNTHETIC_ONLY = ("layers", "context", "widths", "reps", "decode_tokens", "tree_nodes")
PROMPTS_ONLY = ("model", "prompts", "limit", "max_new_tokens", "temperature", "top_p", "threshold", "repeats",
                "csv", "plot", "peer")


def add_parser(sub):
    p = sub.add_parser("bench", help="decoding speed over a prompt set, or --synthetic shapes vs the bandwidth roofline",
                       description=DESCRIPTION + " Options marked [synthetic] need --synthetic; options marked "
                       "[prompts] apply only without it.", one_line_errors=True)
    p.add_argument("--model", metavar="PATH", help="[prompts] checkpoint folder (default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 (on a CPU without native bf16: float32; see trikern --version)")
    p.add_argument("--backend", default="auto", choices=BACKENDS, help="ops (default: auto)")
    p.add_argument("--modes", metavar="M1,M2", help="comma-separated decoding modes (default: all the checkpoint "
                   "supports); ar runs once whatever the block sizes")
    p.add_argument("--block-sizes", metavar="B1,B2", help="comma-separated block sizes (default: the "
                   "checkpoint's; 8 with --synthetic)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (sampling, random weights; default: 0)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's; on a shared "
                   "machine 1 avoids threads spinning against other processes)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run every step eagerly on CUDA")
    p.add_argument("--json", metavar="FILE", help="write every figure, the settings and the environment as JSON")
    # prompt-set bench
    p.add_argument("--prompts", metavar="FILE", help="[prompts] JSONL prompt set (default: the shipped held-out set)")
    p.add_argument("--limit", type=int, metavar="N", help="[prompts] use only the first N prompts")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="[prompts] tokens per generation (default: 64)")
    p.add_argument("--temperature", type=float, metavar="T", help="[prompts] 0 = greedy (default)")
    p.add_argument("--top-p", type=float, metavar="P", help="[prompts] nucleus mass when sampling (default: 1)")
    p.add_argument("--threshold", type=float, help="[prompts] diffusion reveal confidence (default: 0.9)")
    p.add_argument("--repeats", type=int, metavar="R", help="[prompts] runs of the whole prompt set per row "
                   "(default: 1)")
    p.add_argument("--csv", metavar="FILE", help="[prompts] write one row per (mode, block size)")
    p.add_argument("--plot", metavar="FILE.png", help="[prompts] tokens/s and tokens per forward per mode "
                   "(needs matplotlib: pip install 'trikern[plot]')")
    p.add_argument("--peer", choices=["hf"], help="[prompts] also run Hugging Face transformers greedy on the same "
                   "checkpoint, dtype and device; report the tok/s ratio and whether tokens agree with trikern ar")
    # synthetic bench
    p.add_argument("--synthetic", metavar="NAME|CONFIG", help="random weights of a shipped config (nld-3b, nld-8b, "
                   "nld-14b) or of a config.json / checkpoint folder; each forward row also counts the kernels it "
                   "launches, per forward and per layer (on CPU: torch ops, plus the interpreter's Triton launches "
                   "with TRITON_INTERPRET=1 and --backend triton)")
    p.add_argument("--layers", type=int, metavar="N", help="[synthetic] keep only N layers")
    p.add_argument("--context", type=int, metavar="N", help="[synthetic] cache length (default: 1024)")
    p.add_argument("--widths", metavar="T1,T2", help="[synthetic] forward chunk widths (default: 1,8,32,72)")
    p.add_argument("--tree-nodes", metavar="N1,N2", help="[synthetic] also time the verify pass of a linear draft "
                   "tree of N nodes (depths up to the largest block size - 1) against the chain's pass")
    p.add_argument("--reps", type=int, metavar="N", help="[synthetic] timed calls per figure (default: 20 on CUDA, "
                   "3 on CPU)")
    p.add_argument("--decode-tokens", type=int, metavar="N", help="[synthetic] tokens per decode row; 0 skips the "
                   "decode rows (default: 32)")
    p.add_argument("--weights", choices=["int4", "fp8"], help="quantize the layer linears while loading (weight-only, "
                   "as load(quantize=) does; the prompt-set bench needs a 16-bit --model); with --synthetic, the "
                   "bytes and %% of the roofline are the quantized model's")
    p.add_argument("--group-size", type=int, metavar="N", help="int4 columns per scale (default: 128)")
    return p


def parse_modes(text: str, all_modes) -> tuple[str, ...]:
    out = []
    for m in (x.strip() for x in text.split(",")):
        if m not in all_modes:
            raise BenchError(f"--modes: unknown mode {m!r} (expected a comma-separated list of {', '.join(all_modes)})")
        if m not in out:
            out.append(m)
    return tuple(out)


def parse_positive_ints(text: str, option: str) -> tuple[int, ...]:
    out = []
    for x in (x.strip() for x in text.split(",")):
        if not x.isdigit() or int(x) < 1:
            raise BenchError(f"{option}: {x!r} is not a positive integer (expected a comma-separated list like 4,8,16)")
        if int(x) not in out:
            out.append(int(x))
    return tuple(out)


def check_tree_nodes(nodes, B: int):
    """--tree-nodes within what a decode step allows and a tree of B - 1 depths can hold."""
    from ..decode.strategies.tree_device import TOP_K  # noqa: PLC0415
    from ..kernels.tree import MAX_NODES, max_nodes  # noqa: PLC0415

    cap = min(MAX_NODES, max_nodes(max(B - 1, 0), TOP_K))
    for n in nodes:
        if n > cap:
            raise BenchError(f"--tree-nodes {n}: at most {cap} (a tree of depth {max(B - 1, 0)} = the largest "
                             f"--block-sizes - 1, {TOP_K} children per node, {MAX_NODES} nodes at most)")


def check(a, all_modes):
    """Every option checked before a model loads; fills the defaults that depend on the bench kind."""
    given = lambda names: [n for n in names if getattr(a, n) is not None]  # noqa: E731
    opt = lambda n: "--" + n.replace("_", "-")  # noqa: E731
    if a.synthetic is None and given(SYNTHETIC_ONLY):
        raise BenchError(f"{opt(given(SYNTHETIC_ONLY)[0])} applies only with --synthetic")
    if a.synthetic is not None and given(PROMPTS_ONLY):
        raise BenchError(f"{opt(given(PROMPTS_ONLY)[0])} does not apply with --synthetic")
    for name in ("json", "csv", "plot"):  # an unwritable output should fail now, not after the measurement
        v = getattr(a, name)
        if v is not None and Path(v).is_dir():
            raise BenchError(f"--{name} {v}: is a folder; pass a file name")
    if a.group_size is not None and a.weights != "int4":
        raise BenchError("--group-size applies only with --weights int4")
    a.group_size = 128 if a.group_size is None else a.group_size
    if a.weights == "int4" and (a.group_size < 8 or a.group_size % 8):
        raise BenchError(f"--group-size {a.group_size}: expected a positive multiple of 8 (32, 64, 128, ...)")
    a.all_modes = tuple(all_modes)
    a.modes = parse_modes(a.modes, all_modes) if a.modes is not None else None
    a.block_sizes = parse_positive_ints(a.block_sizes, "--block-sizes") if a.block_sizes is not None else None
    for name, low in (("threads", 1), ("limit", 1), ("max_new_tokens", 1), ("repeats", 1), ("layers", 1),
                      ("context", 0),
                      ("reps", 1), ("decode_tokens", 0)):
        v = getattr(a, name)
        if v is not None and v < low:
            raise BenchError(f"{opt(name)} {v}: must be >= {low}")
    if a.synthetic is not None:
        a.widths = parse_positive_ints(a.widths, "--widths") if a.widths is not None else DEFAULT_WIDTHS
        a.tree_nodes = parse_positive_ints(a.tree_nodes, "--tree-nodes") if a.tree_nodes is not None else ()
        a.context = 1024 if a.context is None else a.context
        a.decode_tokens = 32 if a.decode_tokens is None else a.decode_tokens
        a.block_sizes = a.block_sizes or (8,)
        check_tree_nodes(a.tree_nodes, max(a.block_sizes))
        return
    a.max_new_tokens = a.max_new_tokens or 64
    a.temperature = 0.0 if a.temperature is None else a.temperature
    a.top_p = 1.0 if a.top_p is None else a.top_p
    a.threshold = 0.9 if a.threshold is None else a.threshold
    a.repeats = a.repeats or 1
    if a.temperature < 0:
        raise BenchError(f"--temperature {a.temperature}: must be >= 0")
    if not 0 < a.top_p <= 1:
        raise BenchError(f"--top-p {a.top_p}: must be in (0, 1]")
    if not 0 <= a.threshold <= 1:
        raise BenchError(f"--threshold {a.threshold}: must be in [0, 1]")
    if a.peer and a.temperature > 0:
        raise BenchError("--peer hf compares greedy outputs: drop --temperature (or pass 0)")
    if a.peer and a.weights:
        raise BenchError(f"--peer hf runs the 16-bit checkpoint: drop --weights {a.weights} (compare trikern alone)")
    if a.peer and a.modes is not None and "ar" not in a.modes:
        a.modes = ("ar", *a.modes)  # the peer is compared with trikern's AR greedy


def run(a) -> int:
    try:
        check(a, MODES)  # whatever modes the decoder offers, auto included
        if a.threads:
            import torch  # noqa: PLC0415
            torch.set_num_threads(a.threads)
        if a.synthetic is not None:
            return run_synthetic(a)
        return run_prompt_set(a)
    except (ValueError, OSError) as e:
        print(f"trikern bench: error: {e}", file=sys.stderr)
        return 2
