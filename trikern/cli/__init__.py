"""The `trikern` command: one argparse parser, a module per command.

    generate        generate.py       complete a raw-text prompt
    chat            chat.py           the chat REPL
    tune            tune.py           autotune the kernels, or (--decode) auto's step costs
    check-kernels   check_kernels.py  AOT-compile every kernel x config
    serve           serve.py          the OpenAI-compatible HTTP server
    bench           bench.py          decoding speed, or shapes against the roofline
    quantize        quantize.py       write an int4 / fp8 quantized copy of a checkpoint
    selfcheck       selfcheck.py      prove a GPU: kernels vs references, spec == AR, graphs == eager, the table

Each command module has `add_parser(sub)` (its options) and `run(args) -> int` (the exit status);
options.py holds what they share (model and sampling options, loading a model, --version). The
libraries they drive (kernels/, decode/, serve/, bench/) parse no command line.
"""
from __future__ import annotations

import sys

from . import bench, chat, check_kernels, generate, quantize, selfcheck, serve, tune
from .options import Parser, UsageError, Version

COMMANDS = (generate, chat, tune, check_kernels, serve, bench, quantize, selfcheck)  # in `trikern --help` order


def build_parser() -> Parser:
    p = Parser(prog="trikern", description="Tri-mode (AR / diffusion / self-speculation) decoding "
               "with Triton kernels.")
    p.add_argument("--version", action=Version)
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for command in COMMANDS:
        command.add_parser(sub).set_defaults(run=command.run)
    p.commands = sub.choices  # command name -> its parser
    return p


def main(argv=None) -> int:
    """Run `trikern ARGS` (default: sys.argv[1:]) and return the exit status."""
    parser = build_parser()
    try:
        args, extra = parser.parse_known_args(sys.argv[1:] if argv is None else list(argv))
        command = parser.commands[args.command]
        if extra:  # reported by the command's parser, as its own options are
            command.error(f"unrecognized arguments: {' '.join(extra)}")
        try:
            return args.run(args)
        except UsageError as e:
            command.error(str(e))
    except SystemExit as e:  # --help, --version, or a bad option argparse has reported
        return e.code if isinstance(e.code, int) else (0 if e.code is None else 2)
