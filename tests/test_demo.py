"""`make demo` (python -m trikern.demo) runs every mode on the embedded model and prints the table."""
import json
import subprocess
import sys

from util import CHILD_ENV

from trikern.decode import MODES


def test_demo_runs_every_mode(tmp_path):
    r = subprocess.run([sys.executable, "-m", "trikern.demo", "--max-new-tokens", "6"], capture_output=True,
                       text=True, env={**CHILD_ENV, "TRIKERN_AUTOTUNE_DIR": str(tmp_path)}, timeout=300)
    assert r.returncode == 0, r.stderr
    rows = [ln.split()[0] for ln in r.stdout.splitlines() if ln.split() and ln.split()[0] in MODES]
    assert sorted(set(rows)) == sorted(MODES)
    # auto chose from this machine's measured costs: the warm-up stored every candidate of block size
    # 8 (a 6-token auto generation alone measures only the few it runs)
    (profile,) = tmp_path.rglob("decode-steps-*.json")
    stored = {tuple(k.split("/")[:2]) for k in json.loads(profile.read_text())["results"]}
    assert {("ar", "1"), ("spec-linear", "8"), ("spec-quadratic", "8")} <= stored, stored
