"""`trikern chat`: the chat REPL (trikern/repl.py) over a model loaded from the command's options."""
from __future__ import annotations

import sys

from .options import add_model_options, add_sampling_options, generation_kwargs, load_model_from_args, report_errors


def add_parser(sub):
    c = sub.add_parser("chat", help="interactive chat with the model's chat template",
                       description="Chat in the terminal, replies streamed, each turn reusing the previous "
                       "turns' cache. Commands: /mode MODE, /system TEXT, /reset, /stats, /help, /exit; Ctrl-C "
                       "stops a reply. Stats of each reply go to stderr.")
    add_model_options(c)
    add_sampling_options(c)
    c.add_argument("--system", default=None, help="system prompt")
    c.add_argument("--thinking", action="store_true", help="render the template with enable_thinking=True")
    return c


def run(a, stdin=None) -> int:
    return report_errors("chat", lambda: _chat(a, sys.stdin if stdin is None else stdin))


def _chat(a, stdin) -> int:
    from ..repl import ChatSession, run as repl  # noqa: PLC0415

    m = load_model_from_args(a)
    kw = generation_kwargs(a)
    m.check_options(**kw)  # a bad option fails now, not after the first message is typed
    tpl = {"enable_thinking": True} if a.thinking else {}
    return repl(ChatSession(m, kw, a.system, tpl, color=sys.stderr.isatty()), stdin)
