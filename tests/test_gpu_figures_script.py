"""benchmarks/gpu_figures.sh, the prepared run for a lent GPU: it parses, and every command line it
runs passes its tool's option checks (a typo there would waste a device session's minutes)."""
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_figures.sh"
sys.path.insert(0, str(ROOT / "benchmarks"))


@pytest.mark.skipif(shutil.which("bash") is None, reason="no bash on this machine")
def test_script_parses():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0


def commands(text: str, head: str) -> list[list[str]]:
    """The option lists of the script's `head ...` lines (continuations joined, array expansions dropped)."""
    joined = text.replace("\\\n", " ")
    out = []
    for line in joined.splitlines():
        if head in line:
            rest = line.split(head, 1)[1].split(">")[0]
            rest = re.sub(r'"\$\{\w+\[@\]\}"', "", rest)  # "${shape[@]}": the DRY-only options
            out.append(shlex.split(re.sub(r'"\$O/([^"]*)"', r"/tmp/x/\1", rest)))
    return out


def test_every_command_line_passes_its_option_checks():
    import bench_batch

    from trikern.cli import build_parser
    from trikern.cli.bench import check
    from trikern.decode import MODES

    text = SCRIPT.read_text()
    batch = commands(text, "benchmarks/bench_batch.py")
    assert len(batch) == 2 and all(bench_batch.parse(args).synthetic == "nld-8b" for args in batch)
    bench = commands(text, "-m trikern bench")
    assert len(bench) == 1
    a = build_parser().parse_args(["bench", *bench[0]])
    check(a, MODES)
    assert a.tree_nodes == (8, 16, 32, 64) and a.decode_tokens == 0
    (sc,) = commands(text, "-m trikern selfcheck")
    assert build_parser().parse_args(["selfcheck", *sc]).only == "graphs,lossless"
