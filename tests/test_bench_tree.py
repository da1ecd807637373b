"""benchmarks/bench_tree.py runs end to end (`--smoke`: two prompts, 8 tokens): every row's output
equals AR's, and the auto rows that run with a profile each use a private copy of it, so a benchmark
leaves the user's profile as it found it and one row does not teach another."""
import json
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]


def test_tree_bench_smoke_keeps_the_users_profile(tmp_path, monkeypatch, capsys):
    sys.path.insert(0, str(ROOT / "benchmarks"))
    import bench_tree

    user = tmp_path / "autotune"
    (user / "marker").mkdir(parents=True)
    (user / "marker" / "note.json").write_text("{}")
    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(user))
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    j = tmp_path / "rows.json"
    rc = bench_tree.main(["--smoke", "--auto", "--blocks", "4", "--nodes", "chain,B",
                          "--threads", str(torch.get_num_threads()), "--json", str(j)])
    out = capsys.readouterr().out
    assert rc == 0
    rows = json.loads(j.read_text())
    autos = [r for r in rows if r["mode"].startswith("auto")]
    assert {(r["mode"], r["tree_nodes"]) for r in autos} == \
        {(m, n) for m in (bench_tree.AUTO, bench_tree.AUTO_FRESH) for n in (None, 4)}
    assert all(r["equals_ar"] and r["tok_s"] > 0 and r["tpf"] > 0 for r in rows)
    assert "(profile)" in out and "(no profile)" in out and "the best fixed setting" in out
    # the user's directory is as it was; the private copies are gone
    assert sorted(p.relative_to(user).as_posix() for p in user.rglob("*")) == ["marker", "marker/note.json"]
    assert not [p for p in scratch.iterdir() if p.name.startswith("bench_tree_profile_")]
