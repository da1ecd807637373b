"""The `trikern` command: generate, chat, tune, check-kernels."""
from __future__ import annotations

import argparse
import json
import sys
from importlib import metadata

from . import __version__
from .decode.common import MODES


def _model_args(p: argparse.ArgumentParser):
    p.add_argument("--model", metavar="PATH|ORG/NAME", default=None,
                   help="checkpoint folder (config.json, *.safetensors, tokenizer.json), or a Hugging Face hub id "
                   "(downloaded into the HF cache; offline with HF_HUB_OFFLINE=1); default: the embedded model")
    p.add_argument("--revision", default=None, metavar="REV",
                   help="branch, tag or commit hash of a hub id --model (default: main)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="compute dtype (default: bfloat16; on a CPU without native bf16, float32: see --version)")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "torch"],
                   help="kernels: Triton on CUDA and PyTorch references on CPU (auto), or force one")
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=None,
                   help="compile and tune the decode shapes before the first request (default: on with CUDA)")


def _sampling_args(p: argparse.ArgumentParser):
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
    p.add_argument("--thinking-budget", type=int, default=None, metavar="N",
                   help="force </think> after N generated tokens")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run block-mode steps eagerly on CUDA")
    p.add_argument("--stop", action="append", default=None, metavar="STR", help="stop string (repeatable)")


def _gen_kwargs(a) -> dict:
    return dict(mode=a.mode, max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_k=a.top_k,
                top_p=a.top_p, seed=a.seed, block_size=a.block_size, threshold=a.threshold,
                draft_lora=not a.no_draft_lora, thinking_budget=a.thinking_budget, stop=a.stop,
                cuda_graphs=False if a.no_cuda_graphs else None)


def _load(a):
    import torch  # noqa: PLC0415

    from . import load  # noqa: PLC0415
    dtype = getattr(torch, a.dtype) if a.dtype else None
    m = load(a.model, device=a.device, dtype=dtype, backend=a.backend, revision=a.revision)
    warm = a.warmup if a.warmup is not None else m.model.embed_tokens.weight.is_cuda
    if warm:
        print("warming up (compiling and tuning the decode shapes)...", file=sys.stderr, flush=True)
        print(f"warm-up took {m.warmup():.1f}s", file=sys.stderr, flush=True)
    return m


def version_text() -> str:
    """`trikern X (torch Y, triton Z)`: the versions a bug report needs, read without importing torch."""
    def dist(name):
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            return "not installed"
    return f"trikern {__version__} (torch {dist('torch')}, triton {dist('triton')})"


class _Version(argparse.Action):
    """--version: the versions, then what this CPU can do and the dtype it defaults to (asks torch,
    so only when the flag is given)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, **kw):
        super().__init__(option_strings, dest, nargs=0, help="print versions and this CPU's features, and exit")

    def __call__(self, parser, namespace, values, option_string=None):
        from .cpu_features import detect  # noqa: PLC0415

        print(f"{version_text()}\n{detect().summary()}")
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="trikern", description="Tri-mode (AR / diffusion / self-speculation) decoding "
                                "with Triton kernels.")
    p.add_argument("--version", action=_Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    g = sub.add_parser("generate", help="complete a raw-text prompt (no chat template)",
                       description="Complete PROMPT (raw text, no chat template) and stream the text to stdout; "
                       "stats go to stderr. Use '-' to read the prompt from stdin.")
    _model_args(g)
    _sampling_args(g)
    g.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats, finish_reason")
    g.add_argument("prompt", metavar="PROMPT", help="prompt text, or '-' for stdin")

    c = sub.add_parser("chat", help="interactive chat with the model's chat template",
                       description="Chat in the terminal, replies streamed, each turn reusing the previous "
                       "turns' cache. Commands: /mode MODE, /system TEXT, /reset, /stats, /help, /exit; Ctrl-C "
                       "stops a reply. Stats of each reply go to stderr.")
    _model_args(c)
    _sampling_args(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--thinking", action="store_true", help="render the template with enable_thinking=True")

    t = sub.add_parser("tune", help="autotune every kernel on the local GPU and write the cache",
                       description="Benchmark every kernel config on this GPU over representative shapes and write "
                       "autotune_cache/<gpu>/<triton version>/<op>.json (TRIKERN_AUTOTUNE_DIR overrides).")

    k = sub.add_parser("check-kernels", help="AOT-compile every kernel x config for GPU archs (no GPU needed)",
                       description="Compile each kernel and shipped config for the given archs, print registers, "
                       "spills, shared memory and instruction family; exit 1 on spills or shared memory over limit.")
    sub.add_parser("serve", help="OpenAI-compatible HTTP server (needs the serve extra: pip install 'trikern[serve]')")
    sub.add_parser("bench", help="decoding speed over a prompt set, or --synthetic shapes vs the bandwidth roofline")
    return p


def cmd_generate(a) -> int:
    m = _load(a)
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    kw = _gen_kwargs(a)
    if a.json:
        r = m.generate(prompt, **kw)
        print(json.dumps({"text": r.text, "token_ids": r.token_ids, "finish_reason": r.finish_reason,
                          "stats": r.stats}, ensure_ascii=False))
        return 0
    for piece in m.stream(prompt, **kw):
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    _print_stats(m.last_result.stats)
    return 0


def _print_stats(s: dict):
    acc = f" mean_accept={s['mean_acceptance_length']:.2f}" if s.get("acceptance_lengths") else ""
    print(f"[{s['mode']}] {s['generated_tokens']} tokens, {s['forwards']} forwards, "
          f"{s['tokens_per_forward']:.2f} tok/fwd{acc}, {s['tokens_per_second']:.1f} tok/s, "
          f"prefill {s['prefill_tokens_per_second']:.1f} tok/s", file=sys.stderr)


def cmd_chat(a, stdin=sys.stdin) -> int:
    from .repl import ChatSession, run  # noqa: PLC0415

    m = _load(a)
    kw = _gen_kwargs(a)
    m.check_options(**kw)  # a bad option fails now, not after the first message is typed
    tpl = {"enable_thinking": True} if a.thinking else {}
    return run(ChatSession(m, kw, a.system, tpl, color=sys.stderr.isatty()), stdin)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    # tune and check-kernels own their options (and --help): hand them everything after the name.
    if argv and argv[0] == "tune" and "--decode" in argv:
        from .decode.profile import tune_main as tune_decode  # noqa: PLC0415
        return tune_decode(argv[1:])
    if argv and argv[0] == "tune":
        from .kernels.autotune import tune_main  # noqa: PLC0415
        return tune_main(argv[1:])
    if argv and argv[0] == "check-kernels":
        from .kernels.aot import main as aot_main  # noqa: PLC0415
        return aot_main(argv[1:])
    if argv and argv[0] == "bench":
        from .bench import main as bench_main  # noqa: PLC0415
        return bench_main(argv[1:])
    if argv and argv[0] == "serve":
        from .serve import main as serve_main  # noqa: PLC0415
        return serve_main(argv[1:])
    a = build_parser().parse_args(argv)
    try:
        return cmd_generate(a) if a.command == "generate" else cmd_chat(a)
    except (ValueError, FileNotFoundError) as e:  # bad options, prompt or checkpoint: one line, no traceback
        print(f"trikern {a.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
