"""The chat REPL never outgrows the model's context (issue 18 item 5): the trimming rule on its own
(`fit_history`, `reply_room`), a `ChatSession` on a checkpoint with a 96-token context, and the real
`trikern chat` on a pseudo-terminal, where the history passes the embedded model's 256 tokens in a few
turns and the session goes on."""
import io
import os
import pty
import re
import signal
import sys

import pytest
import torch
from util import CHILD_ENV as ENV
from util import PtyReader

from trikern.repl import ChatSession, fit_history, reply_room

SYS = {"role": "system", "content": "S"}


def conv(*turns, system=True):
    """A conversation of (user, reply) turns, then the newest user message 'new'."""
    msgs = [SYS] if system else []
    for u, a in turns:
        msgs += [{"role": "user", "content": u}, {"role": "assistant", "content": a}]
    return msgs + [{"role": "user", "content": "new"}]


def chars(msgs):  # a stand-in for the token count: one token per character
    return sum(len(m["content"]) for m in msgs)


def test_everything_kept_when_it_fits_and_counted_once():
    msgs = conv(("u1", "a1"), ("u2", "a2"))
    calls = []
    fit = fit_history(msgs, lambda m: calls.append(m) or chars(m), budget=chars(msgs))
    assert fit.fits and fit.dropped == 0 and fit.messages == msgs and fit.tokens == chars(msgs)
    assert len(calls) == 1


def test_oldest_turns_go_first_and_whole():
    msgs = conv(("u1" * 5, "a1" * 5), ("u2", "a2"), ("u3", "a3"))
    fit = fit_history(msgs, chars, budget=chars(msgs) - 1)  # one turn too many: the first (longest) goes
    assert fit.fits and fit.dropped == 1
    assert fit.messages == [SYS] + msgs[3:]  # the system prompt stays; u1 and its reply left together
    fit = fit_history(msgs, chars, budget=chars([SYS] + msgs[-3:]))
    assert fit.dropped == 2 and [m["content"] for m in fit.messages] == ["S", "u3", "a3", "new"]


def test_system_and_newest_message_always_kept():
    msgs = conv(("u1", "a1"), ("u2", "a2"))
    fit = fit_history(msgs, chars, budget=len("S") + len("new"))
    assert fit.fits and fit.dropped == 2 and fit.messages == [SYS, msgs[-1]]
    fit = fit_history(msgs, chars, budget=3)  # not even those two: reported, with their size
    assert not fit.fits and fit.dropped == 2 and fit.messages == [SYS, msgs[-1]] and fit.tokens == 4
    lone = fit_history([SYS, msgs[-1]], chars, budget=1)
    assert not lone.fits and lone.dropped == 0


def test_without_a_system_prompt_and_with_a_reply_first():
    msgs = conv(("u1", "a1"), system=False)
    fit = fit_history(msgs, chars, budget=3)
    assert fit.fits and fit.dropped == 1 and fit.messages == [msgs[-1]]
    odd = [SYS, {"role": "assistant", "content": "greeting"}, {"role": "user", "content": "new"}]
    fit = fit_history(odd, chars, budget=4)  # a reply before any user message belongs to the first turn
    assert fit.fits and fit.dropped == 1 and fit.messages == [SYS, odd[-1]]


def test_reply_room():
    assert reply_room(12, 256) == 12
    assert reply_room(256, 256) == 128  # the CLI's default budget on the embedded model keeps history
    assert reply_room(0, 256) == 1  # the API needs a prompt shorter than the context
    assert reply_room(10**6, 3) == 1


@pytest.fixture(scope="module")
def small(tmp_path_factory):
    """A chat checkpoint whose context is 96 tokens."""
    import trikern  # noqa: PLC0415
    from synth import write_chat_checkpoint  # noqa: PLC0415

    path = write_chat_checkpoint(tmp_path_factory.mktemp("ctx96"), max_position_embeddings=96)
    return trikern.load(path, dtype=torch.float32)


def test_session_drops_turns_and_never_raises(small):
    out, err = io.StringIO(), io.StringIO()
    s = ChatSession(small, {"max_new_tokens": 6}, system="Be brief.", out=out, err=err)
    budget = 96 - 6
    for i in range(8):
        s.reply(f"turn {i}: tell me a story about a cat and a dog")
        prompt = small.chat_prompt(s.history[:-1])  # what was sent: all but the reply
        assert len(prompt) <= budget
        assert s.history[0] == {"role": "system", "content": "Be brief."}
        assert s.history[-2]["content"].startswith(f"turn {i}:") and s.history[-1]["role"] == "assistant"
    notes = [ln for ln in err.getvalue().splitlines() if "dropped" in ln]
    assert notes and all(re.fullmatch(r"\(\d+ earlier turns? dropped to fit the 96-token context\)", ln)
                         for ln in notes)
    assert "error" not in err.getvalue()

    before = list(s.history)
    s.reply("word " * 200)  # not even alone: one line, nothing sent, the history as it was
    assert s.history == before
    last = err.getvalue().splitlines()[-1]
    assert last.startswith("(message not sent: even alone with the system prompt") and "96-token context" in last
    s.reply("ok \ud800")  # refused by the model's checks: one error line, the history as it was
    assert s.history == before and "message: lone surrogate U+D800 at character 3" in err.getvalue()
    s.reply("and now?")  # the session goes on
    assert s.history[-2]["content"] == "and now?"


def test_dropped_line_is_dim_on_a_terminal(small):
    err = io.StringIO()
    s = ChatSession(small, {"max_new_tokens": 6}, out=io.StringIO(), err=err, color=True)
    for i in range(5):
        s.reply(f"turn {i}: tell me a story about a cat and a dog")
    assert re.search(r"\x1b\[2m\(\d+ earlier turns? dropped to fit the 96-token context\)\x1b\[0m", err.getvalue())


def test_repl_on_a_terminal_outgrows_the_context_and_goes_on(tmp_path):
    """`trikern chat` on the embedded model (256-token context) with an 8-token reply budget: long
    messages pass the context by the third turn."""
    pid, fd = pty.fork()
    if pid == 0:
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        env = dict(ENV, TRIKERN_HISTORY=str(tmp_path / "history"))
        os.execvpe(sys.executable, [sys.executable, "-m", "trikern", "chat", "--dtype", "float32",
                                    "--max-new-tokens", "8", "--system", "Be brief."], env)
    reader = PtyReader(fd)
    read_until = reader.read_until

    def turn(text: str, expect: bytes):
        mark = len(reader.seen)
        os.write(fd, text.encode() + b"\n")
        assert read_until(expect, mark), reader.seen[mark:]
        assert read_until(rb"\n> ", mark), reader.seen[mark:]  # back at the prompt
        return reader.seen[mark:]

    long = "Tell me about the history of the cat and the dog. " * 4  # ~70 tokens
    try:
        assert read_until(rb"> "), reader.seen
        assert b"dropped" not in turn("1 " + long, rb"tok/fwd")
        assert b"dropped" not in turn("2 " + long, rb"tok/fwd")
        third = turn("3 " + long, rb"tok/fwd")
        assert re.search(rb"\x1b\[2m\(1 earlier turn dropped to fit the 256-token context\)\x1b\[0m", third), third
        assert b"message not sent" in turn("4 " + long * 4, rb"message not sent")  # ~280 tokens: over 248
        assert b"tok/fwd" in turn("hi", rb"tok/fwd")
        os.write(fd, b"/exit\n")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        assert b"Traceback" not in reader.seen
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)
