"""`make demo` (python -m trikern.demo) runs every mode on the embedded model and prints the table."""
import subprocess
import sys

from util import CHILD_ENV

from trikern.decode import MODES


def test_demo_runs_every_mode(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trikern.demo", "--max-new-tokens", "6"], capture_output=True,
                       text=True, env=CHILD_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [ln.split()[0] for ln in r.stdout.splitlines() if ln.split() and ln.split()[0] in MODES]
    assert sorted(set(rows)) == sorted(MODES)
