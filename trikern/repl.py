"""`trikern chat`: a streaming terminal chat over `Model.chat_stream`.

Multi-turn history rides on the API's prefix reuse (each turn prefills only what the last one did
not leave in the cache). Commands: /mode MODE, /reset, /stats, /system TEXT, /help, /exit. After
each reply one dim line gives tokens/s, tokens per forward, mean acceptance and cached tokens.
Ctrl-C stops the reply being written and returns to the prompt (the partial reply stays in the
history); Ctrl-D or /exit leaves. On a terminal, lines are edited with readline and kept in a
history file.
"""
from __future__ import annotations

import json
import os
import sys
from pathlib import Path

from .decode.common import MODES

HELP = """commands:
  /mode MODE     decode the next replies in MODE ({modes})
  /system TEXT   set the system prompt and start over
  /reset         forget the conversation (and its cache)
  /stats         the last reply's full statistics
  /help          this text
  /exit          leave (Ctrl-D too); Ctrl-C stops a reply"""


def history_file() -> Path:
    return Path(os.environ.get("TRIKERN_HISTORY", Path.home() / ".trikern_history"))


class ChatSession:
    def __init__(self, model, options: dict, system: str | None = None, template_kwargs=None,
                 out=sys.stdout, err=sys.stderr, color: bool = False):
        self.m, self.options = model, dict(options)
        self.system, self.tpl = system, dict(template_kwargs or {})
        self.out, self.err, self.color = out, err, color
        self.history: list[dict] = []
        self.last: dict | None = None
        self.reset()

    def reset(self):
        self.history = [{"role": "system", "content": self.system}] if self.system else []
        self.m.reset()

    def note(self, text: str, dim: bool = False):
        if dim and self.color:
            text = f"\033[2m{text}\033[0m"
        print(text, file=self.err, flush=True)

    def command(self, line: str) -> bool:
        """Run a /command; False means leave."""
        name, _, arg = line[1:].partition(" ")
        arg = arg.strip()
        if name in ("exit", "quit"):
            return False
        if name == "reset":
            self.reset()
            self.note("(conversation cleared)")
        elif name == "system":
            self.system = arg or None
            self.reset()
            self.note(f"(system prompt {'set' if arg else 'removed'}; conversation cleared)")
        elif name == "mode":
            try:
                self.m.check_options(**{**self.options, "mode": arg})
            except ValueError as e:
                self.note(f"error: {e}")
            else:
                self.options["mode"] = arg
                self.note(f"(mode {arg})")
        elif name == "stats":
            self.note(json.dumps(self.last, indent=1) if self.last else "(no reply yet)")
        elif name == "help":
            self.note(HELP.format(modes=", ".join(MODES)))
        else:
            self.note(f"unknown command /{name}: /help lists them")
        return True

    def reply(self, text: str):
        """Stream the model's answer to `text`; Ctrl-C stops it and keeps what was written."""
        self.history.append({"role": "user", "content": text})
        pieces: list[str] = []
        stream = self.m.chat_stream(self.history, template_kwargs=self.tpl, **self.options)
        try:
            for piece in stream:
                pieces.append(piece)
                self.out.write(piece)
                self.out.flush()
        except KeyboardInterrupt:
            stream.close()
            self.out.write("\n")
            self.note("(stopped)", dim=True)
            self.history.append({"role": "assistant", "content": "".join(pieces)})
            self.last = None
            return
        self.out.write("\n")
        self.out.flush()
        r = self.m.last_result
        self.history.append({"role": "assistant", "content": r.text})
        self.last = r.stats
        s = r.stats
        acc = f", {s['mean_acceptance_length']:.2f} mean acceptance" if s.get("acceptance_lengths") else ""
        self.note(f"[{s['mode']}] {s['generated_tokens']} tokens, {s['tokens_per_second']:.1f} tok/s, "
                  f"{s['tokens_per_forward']:.2f} tok/fwd{acc}, {s['cached_tokens']} cached prompt tokens",
                  dim=True)


def run(session: ChatSession, stdin=sys.stdin) -> int:
    interactive = stdin.isatty()
    if interactive:
        _readline_on()
    while True:
        try:
            line = input("> ") if interactive else stdin.readline()
        except EOFError:
            line = ""
        except KeyboardInterrupt:  # at the prompt: drop the line, stay
            print(file=session.out)
            continue
        if not line:  # end of input
            return 0
        line = line.strip()
        if not line:
            continue
        if line.startswith("/"):
            if not session.command(line):
                return 0
            continue
        session.reply(line)


def _readline_on():
    try:
        import atexit  # noqa: PLC0415
        import readline  # noqa: PLC0415
    except ImportError:  # no readline on this platform: plain input() still works
        return
    path = history_file()
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)

    def save():
        try:
            readline.write_history_file(path)
        except OSError:
            pass
    atexit.register(save)
