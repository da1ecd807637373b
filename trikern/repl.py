"""`trikern chat`: a streaming terminal chat over `Model.chat_stream`.

Multi-turn history rides on the API's prefix reuse (each turn prefills only what the last one did
not leave in the cache). Commands: /mode MODE, /reset, /stats, /system TEXT, /help, /exit. After
each reply one dim line gives tokens/s, tokens per forward, mean acceptance and cached tokens.
Ctrl-C stops the reply being written and returns to the prompt (the partial reply stays in the
history); Ctrl-D or /exit leaves. On a terminal, lines are edited with readline and kept in a
history file.

The conversation never outgrows the model's context: before a turn, the oldest turns (a user message
with its reply) are dropped until the prompt leaves the reply its room (`fit_history`), and one dim
line says how many. A message that does not fit even alone with the system prompt is not sent (one
line says so), and neither it nor a refused request (text that is not UTF-8, say) ends the session.
"""
from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .decode import MODES
from .tokenizer import check_text

HELP = """commands:
  /mode MODE     decode the next replies in MODE ({modes})
  /system TEXT   set the system prompt and start over
  /reset         forget the conversation (and its cache)
  /stats         the last reply's full statistics
  /help          this text
  /exit          leave (Ctrl-D too); Ctrl-C stops a reply"""


@dataclass
class Fit:
    messages: list[dict]  # what to send: the system message(s), the turns kept, the newest message
    dropped: int  # earlier turns left out
    tokens: int  # prompt tokens of `messages`
    fits: bool  # False: even the system message(s) and the newest turn alone exceed the budget


def fit_history(messages: list[dict], count: Callable[[list[dict]], int], budget: int) -> Fit:
    """Drop the oldest turns of a conversation until its prompt is at most `budget` tokens.

    `messages`: the leading system message(s), then turns (a user message and the messages after it,
    its reply), the last turn being the newest user message. `count(messages)` is the prompt's length in
    tokens (the rendered chat template). System messages and the newest turn are always kept; a turn is
    dropped whole, oldest first, so the rest stays a well-formed conversation. `count` runs once when
    nothing needs dropping, and once per dropped turn otherwise.
    """
    head = 0
    while head < len(messages) and messages[head].get("role") == "system":
        head += 1
    # where each turn starts: the first message after the system ones, then every later user message
    starts = [head] + [i for i in range(head + 1, len(messages)) if messages[i].get("role") == "user"]
    for dropped, start in enumerate(starts):
        kept = messages[:head] + messages[start:]
        n = count(kept)
        if n <= budget:
            return Fit(kept, dropped, n, True)
    return Fit(kept, len(starts) - 1, n, False)


def reply_room(max_new_tokens: int, context: int) -> int:
    """Prompt tokens a turn leaves free for the reply: its whole budget, but at most half the context
    (a budget as long as the context, the CLI's default on small models, would leave no room for any
    history; past the room kept, a reply stops at the context's end, as every generation does)."""
    return max(1, min(max_new_tokens, context // 2))


def history_file() -> Path:
    return Path(os.environ.get("TRIKERN_HISTORY", Path.home() / ".trikern_history"))


class ChatSession:
    def __init__(self, model, options: dict, system: str | None = None, template_kwargs=None,
                 out=sys.stdout, err=sys.stderr, color: bool = False):
        self.m, self.options = model, dict(options)
        self.system, self.tpl = check_text(system, "system"), dict(template_kwargs or {})
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
            try:
                self.system = check_text(arg, "system") or None
            except ValueError as e:
                self.note(f"error: {e}")
                return True
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

    def fit(self, messages: list[dict]) -> tuple[Fit, int, int]:
        """(fit_history of `messages`, the context, the reply's room) for the current options."""
        context = self.m.cfg.max_position_embeddings
        room = reply_room(self.m.check_options(**self.options).max_new_tokens, context)
        fit = fit_history(messages, lambda msgs: len(self.m.chat_prompt(msgs, **self.tpl)), context - room)
        return fit, context, room

    def reply(self, text: str):
        """Stream the model's answer to `text`; Ctrl-C stops it and keeps what was written. Earlier
        turns that leave the reply too little room are dropped first; a message that does not fit
        even so, or a request the model refuses, is not sent and leaves the history as it was."""
        try:
            fit, context, room = self.fit([*self.history, {"role": "user", "content": check_text(text, "message")}])
            if not fit.fits:
                self.note(f"(message not sent: even alone with the system prompt it makes a {fit.tokens}-token "
                          f"prompt, over the {context - room} tokens the {context}-token context leaves after "
                          f"{room} for the reply)")
                return
            stream = self.m.chat_stream(fit.messages, template_kwargs=self.tpl, **self.options)
        except ValueError as e:  # checked before any forward: nothing ran, the history is unchanged
            self.note(f"error: {e}")
            return
        if fit.dropped:
            self.note(f"({fit.dropped} earlier turn{'s' if fit.dropped > 1 else ''} dropped to fit the "
                      f"{context}-token context)", dim=True)
        self.history = fit.messages
        pieces: list[str] = []
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
        r = stream.result
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
        except UnicodeDecodeError as e:  # stdin decodes strictly (a UTF-8 locale): drop the line, stay
            session.note(f"error: the line is not UTF-8 text ({e.reason}: byte 0x{e.object[e.start]:02X})")
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
