"""What the commands share: the parser class, model and sampling options, loading a model from them,
error reporting, and --version."""
from __future__ import annotations

import argparse
import sys
from importlib import metadata
from typing import Callable

from .. import __version__
from ..decode import MODES
from ..kernels.dispatch import BACKENDS


class Parser(argparse.ArgumentParser):
    """argparse's parser; with `one_line_errors`, a bad option is one line `PROG: error: ...` and exit
    status 2, without the usage text (`trikern bench`)."""

    def __init__(self, *args, one_line_errors: bool = False, **kw):
        super().__init__(*args, **kw)
        self.one_line_errors = one_line_errors

    def error(self, message):
        if self.one_line_errors:
            self.exit(2, f"{self.prog}: error: {message}\n")
        super().error(message)


class UsageError(ValueError):
    """A bad option found after parsing (a value out of range, options that do not go together):
    `trikern.cli.main` reports it through the command's parser, as argparse reports its own."""


def add_model_options(p: argparse.ArgumentParser):
    p.add_argument("--model", metavar="PATH|ORG/NAME", default=None,
                   help="checkpoint folder (config.json, *.safetensors, tokenizer.json), or a Hugging Face hub id "
                   "(downloaded into the HF cache; offline with HF_HUB_OFFLINE=1); default: the embedded model")
    p.add_argument("--revision", default=None, metavar="REV",
                   help="branch, tag or commit hash of a hub id --model (default: main)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="compute dtype (default: bfloat16; on a CPU without native bf16, float32: see --version)")
    p.add_argument("--backend", default="auto", choices=BACKENDS,
                   help="ops: Triton on CUDA and the CPU backend on CPU (auto), or force one (torch: the plain "
                   "PyTorch references)")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="compile and tune the decode shapes before the first request (default: on with CUDA)")


def add_sampling_options(p: argparse.ArgumentParser):
    p.add_argument("--mode", default="ar", choices=MODES, help="decoding mode (default: ar)")
    p.add_argument("--max-new-tokens", type=int, default=256, metavar="N", help="token budget (default: 256)")
    p.add_argument("--temperature", type=float, default=0.0, metavar="T", help="0 = greedy (default)")
    p.add_argument("--top-k", type=int, default=0, metavar="K", help="keep the K most likely tokens (0 = off)")
    p.add_argument("--top-p", type=float, default=1.0, metavar="P", help="nucleus sampling mass (1 = off)")
    p.add_argument("--seed", type=int, default=None, help="RNG seed for reproducible sampling")
    p.add_argument("--block-size", type=int, default=None, metavar="B",
                   help="diffusion / speculation block (default: the checkpoint's block_size; at most 64 unless "
                   "the checkpoint's is larger)")
    p.add_argument("--threshold", type=float, default=0.9, help="diffusion reveal confidence (default: 0.9)")
    p.add_argument("--no-draft-lora", action="store_true", help="don't apply the draft LoRA on draft passes")
    p.add_argument("--tree-nodes", type=int, default=None, metavar="N",
                   help="spec-linear / spec-quadratic / auto: verify a draft tree of N nodes instead of the chain")
    p.add_argument("--thinking-budget", type=int, default=None, metavar="N",
                   help="force </think> after N generated tokens")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run block-mode steps eagerly on CUDA")
    p.add_argument("--stop", action="append", default=None, metavar="STR", help="stop string (repeatable)")


def generation_kwargs(a) -> dict:
    """The keyword arguments of Model.generate / stream / chat that the sampling options give."""
    return dict(mode=a.mode, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                top_p=a.top_p, seed=a.seed, block_size=a.block_size, threshold=a.threshold,
                draft_lora=not a.no_draft_lora, thinking_budget=a.thinking_budget, stop=a.stop,
                cuda_graphs=False if a.no_cuda_graphs else None, tree_nodes=a.tree_nodes)


def load_model_from_args(a, batch_sizes=()):
    """trikern.load() with the model options, then the warm-up --warmup (default: on CUDA) asks for
    (`batch_sizes`: the batched decoder's, whose step costs batched auto needs)."""
    import torch  # noqa: PLC0415

    from .. import load  # noqa: PLC0415
    dtype = getattr(torch, a.dtype) if a.dtype else None
    m = load(a.model, device=a.device, dtype=dtype, backend=a.backend, revision=a.revision)
    warm = a.warmup if a.warmup is not None else m.model.embed_tokens.weight.is_cuda
    if warm:
        print("warming up (compiling and tuning the decode shapes)...", file=sys.stderr, flush=True)
        print(f"warm-up took {m.warmup(batch_sizes=batch_sizes):.1f}s", file=sys.stderr, flush=True)
    return m


def report_errors(command: str, body: Callable[[], int]) -> int:
    """body(), with a bad option, prompt or checkpoint (ValueError, FileNotFoundError) reported as one
    line `trikern COMMAND: error: ...` and exit status 2, no traceback; Ctrl-C is exit status 130."""
    try:
        return body()
    except (ValueError, FileNotFoundError) as e:
        print(f"trikern {command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


def version_text() -> str:
    """`trikern X (torch Y, triton Z)`: the versions a bug report needs, read without importing torch."""
    def dist(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"
    return f"trikern {__version__} (torch {dist('torch')}, triton {dist('triton')})"


class Version(argparse.Action):
    """--version: the versions, then what this CPU can do and the dtype it defaults to (asks torch,
    so only when the flag is given)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print versions and this CPU's features, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from ..cpu_features import detect  # noqa: PLC0415

        print(f"{version_text()}\n{detect().summary()}")
        parser.exit()
