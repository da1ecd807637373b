"""benchmarks/bench_batch.py runs end to end on a synthetic shape (the GPU figure's command, dry-run on
a CPU at a tiny config): rows for every mode and concurrency, each user's text equal to its solo
text (fp32), and the regions sized for the run, not the config's context."""
import json
import sys
from pathlib import Path

from synth import write_json
from util import nld_config_dict

ROOT = Path(__file__).resolve().parents[1]


def test_synthetic_batch_bench_runs_every_mode_and_concurrency(tmp_path, capsys, monkeypatch):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_batch
    import trikern.batch as batch

    cfg = write_json(tmp_path / "config.json", nld_config_dict(max_position_embeddings=1 << 15))
    regions, made = [], batch.BatchDecoder.__init__

    def spy(self, *a, **kw):
        made(self, *a, **kw)
        regions.append(self.cache.region)
    monkeypatch.setattr(batch.BatchDecoder, "__init__", spy)
    j = tmp_path / "rows.json"
    rc = bench_batch.main(["--synthetic", str(cfg), "--device", "cpu", "--dtype", "fp32", "--threads", "1",
                           "--modes", "ar,spec-linear:2,auto:2", "--concurrency", "1,2", "--repeats", "1",
                           "--max-new-tokens", "4", "--prompt-tokens", "6", "--json", str(j)])
    out = capsys.readouterr().out
    assert rc == 0 and "synthetic" in out and "random weights" in out
    rows = json.loads(j.read_text())
    assert {(r["mode"], r["c"]) for r in rows} == {(m, c) for m in ("ar", "spec-linear", "auto") for c in (1, 2)}
    assert all(r["equals_solo"] and r["aggregate"] > 0 and len(r["aggregates"]) == 1 for r in rows)
    # where the decode time went: the ragged end's share, and auto's own time a step
    assert all(0 <= r["ragged_share"] <= 1 for r in rows) and "ragged end" in out
    assert all(r["own_us_per_step"] > 0 for r in rows if r["mode"] == "auto") and "its own time" in out
    assert regions and max(regions) < 256, regions  # the run's prompts and budgets (and the tuner's), not 32k


def test_a_stopped_run_reports_the_repeats_it_completed(tmp_path):
    """`timeout` (SIGTERM) during the repeats: the figures of the repeats done so far, exit status 0
    (a GPU session's time limit must not lose the whole table, which prints at the end)."""
    import os
    import signal
    import subprocess

    cfg = write_json(tmp_path / "config.json", nld_config_dict(max_position_embeddings=1 << 15))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TRIKERN_DECODE_PROFILE": "0"}
    p = subprocess.Popen([sys.executable, str(ROOT / "benchmarks" / "bench_batch.py"), "--synthetic", str(cfg),
                          "--device", "cpu", "--dtype", "fp32", "--modes", "ar", "--concurrency", "1,2",
                          "--repeats", "1000", "--max-new-tokens", "2", "--prompt-tokens", "4"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    for line in p.stderr:
        if line.startswith("# repeat 2/1000 done"):
            p.send_signal(signal.SIGTERM)
            break
    out, err = p.communicate(timeout=120)
    assert p.returncode == 0, err
    assert "# stopped after" in err and "| ar | 2 |" in out
    done = int(err.split("# stopped after ")[1].split()[0])
    assert 2 <= done < 1000 and f"{done} repeats interleaved" in out


def test_against_best_leaves_the_compared_repeat_out():
    """Two near-tied fixed settings: the plain ratio compares every repeat with the one of highest
    median, leave-one-out compares repeat r with the best of the other repeats."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from bench_batch import against_best

    fixed = {"a": [12.0, 8.0, 10.0], "b": [9.0, 11.0, 9.5]}
    top, plain, held = against_best([10.0, 10.0, 10.0], fixed)
    assert top == "a" and plain == 1.0  # 10/12, 10/8, 10/10
    # r = 0: b (median 10.25 against 9); r = 1: a (11 against 9.25); r = 2: a (a tie goes to the first)
    assert held == 10.0 / 9.0
    assert against_best([5.0], {"a": [4.0], "b": [5.0]}) == ("b", 1.0, 1.0)  # one repeat: itself


def test_lockstep_runs_every_mode_with_own_clocks(tmp_path, capsys):
    """--lockstep: the modes' decoders step in turns at each concurrency; every row is there, each
    user's text still its solo text (fp32), the aggregates positive."""
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_batch

    cfg = write_json(tmp_path / "config.json", nld_config_dict(max_position_embeddings=1 << 15))
    j = tmp_path / "rows.json"
    rc = bench_batch.main(["--synthetic", str(cfg), "--device", "cpu", "--dtype", "fp32", "--threads", "1",
                           "--modes", "ar,spec-linear:2,auto:2", "--concurrency", "1,2", "--repeats", "2",
                           "--max-new-tokens", "4", "--prompt-tokens", "6", "--json", str(j), "--lockstep"])
    out = capsys.readouterr().out
    assert rc == 0 and "lockstep" in out
    rows = json.loads(j.read_text())
    assert {(r["mode"], r["c"]) for r in rows} == {(m, c) for m in ("ar", "spec-linear", "auto") for c in (1, 2)}
    assert all(r["equals_solo"] and len(r["aggregates"]) == 2 and min(r["aggregates"]) > 0 for r in rows)
