"""`trikern chat` driven as a user would: turns and commands on stdin (a real subprocess on the
embedded model), and a pseudo-terminal where Ctrl-C stops a reply without leaving the REPL."""
import os
import pty
import re
import signal
import subprocess
import sys

from util import CHILD_ENV as ENV
from util import PtyReader


def chat(stdin, *args):
    return subprocess.run([sys.executable, "-m", "trikern", "chat", "--dtype", "float32", "--max-new-tokens", "12",
                           *args], input=stdin, capture_output=True, text=True, env=ENV, timeout=300)


def stats_lines(err):
    return [ln for ln in err.splitlines() if "tok/fwd" in ln]


def test_turns_commands_and_prefix_reuse():
    r = chat("hello\nand then?\n/stats\n/mode spec-linear\none more\n/mode bogus\n/system Be brief.\nhi\n"
             "/reset\nhi\n/nope\n/exit\nnot read\n")
    assert r.returncode == 0, r.stderr
    lines = stats_lines(r.stderr)
    assert len(lines) == 5  # one per reply; nothing after /exit
    cached = [int(re.search(r"(\d+) cached", ln).group(1)) for ln in lines]
    assert cached[1] > 0 and cached[2] > cached[1]  # later turns reuse the conversation's cache
    assert lines[0].startswith("[ar]") and lines[2].startswith("[spec-linear]")
    assert '"generated_tokens"' in r.stderr  # /stats printed the last reply's statistics
    assert "mode='bogus'" in r.stderr and "unknown command /nope" in r.stderr
    assert "Traceback" not in r.stderr
    # /system and /reset start over: the first turn after each reuses at most the template's start
    assert cached[3] < cached[2] and cached[4] < cached[2]


def test_ctrl_c_stops_a_reply_and_the_repl_goes_on(tmp_path):
    pid, fd = pty.fork()
    if pid == 0:  # the child: trikern chat on the pseudo-terminal
        # As a terminal's shell would start it: a test run launched as a background job (`cmd &` in a
        # non-interactive shell) inherits SIGINT ignored, and Python then leaves Ctrl-C ignored.
        signal.signal(signal.SIGINT, signal.SIG_DFL)
        env = dict(ENV, TRIKERN_HISTORY=str(tmp_path / "history"))
        # spec-quadratic B16, the slowest mode here: 200 tokens take ~3 s, a reply still streaming
        # when the Ctrl-C comes (AR's take ~0.5 s)
        os.execvpe(sys.executable, [sys.executable, "-m", "trikern", "chat", "--dtype", "float32", "--mode",
                                    "spec-quadratic", "--block-size", "16", "--max-new-tokens", "200"], env)
    reader = PtyReader(fd, timeout=120)
    read_until = reader.read_until

    try:
        assert read_until(rb"> "), reader.seen
        os.write(fd, b"Tell me a long story about a cat.\n")
        # Ctrl-C once the reply is being written (earlier, while the line is still being read, it
        # drops the line instead: the prompt's own Ctrl-C)
        assert read_until(rb"about a cat\.\r\n\s*\S"), reader.seen
        os.write(fd, b"\x03")
        assert read_until(rb"\(stopped\)"), reader.seen
        mark = len(reader.seen)
        os.write(fd, b"hi\n")
        assert read_until(rb"tok/fwd"), reader.seen[mark:]
        os.write(fd, b"/exit\n")
        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0  # (the text itself may say anything)
        assert (tmp_path / "history").read_text().splitlines()[-1] == "/exit"  # readline history kept
    finally:
        try:
            os.kill(pid, 9)
        except ProcessLookupError:
            pass
        os.close(fd)
