"""bench/bench_elementwise.py: exits 0 with a message without CUDA; --smoke runs every code path."""
import csv
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from util import CHILD_ENV

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "bench_elementwise.py"


def run(*args, **env):
    e = {**CHILD_ENV, **env}
    return subprocess.run([sys.executable, str(SCRIPT), *args], env=e, capture_output=True, text=True, cwd=ROOT)


@pytest.mark.skipif(torch.cuda.is_available(), reason="a GPU is present: the benchmark would really run")
def test_skips_cleanly_without_cuda():
    out = run()
    assert out.returncode == 0, out.stderr
    assert "skipped, no CUDA GPU" in out.stdout


def test_smoke_writes_csv(tmp_path):
    path = tmp_path / "elementwise.csv"
    out = run("--smoke", "--csv", str(path))
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(path.open()))
    ops = {(r["op"], r["T"], r["impl"]) for r in rows}
    assert ops == {(op, T, impl) for op in ("rope", "rmsnorm", "rmsnorm+res", "swiglu") for T in ("1", "5")
                   for impl in ("triton", "eager")}
    assert all(r["gpu"] == "cpu-interpreter" and r["triton"] and r["torch"] and float(r["MB"]) > 0 for r in rows)



def test_csv_appends_atomically(tmp_path):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        import common
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    env = {k: "x" for k in common.ENV_COLUMNS}
    path = tmp_path / "r.csv"
    common.write_csv(path, [{"op": "a", "us": 1.0}], env)
    common.write_csv(path, [{"op": "b", "us": 2.0}], env)
    assert [r["op"] for r in csv.DictReader(path.open())] == ["a", "b"]
    common.write_csv(path, [{"op": "c", "other": 3}], env)  # new columns: a fresh file
    assert [r["op"] for r in csv.DictReader(path.open())] == ["c"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.csv"]
