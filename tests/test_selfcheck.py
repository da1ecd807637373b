"""`trikern selfcheck`: the CPU dry run (tiny shapes, Triton interpreted) passes every check, a broken
reference makes its check fail (exit status 1), bad options are one error line, and without
TRITON_INTERPRET the command re-runs itself under the interpreter."""
from __future__ import annotations

import importlib
import io
import json
import subprocess
import sys

import pytest
import torch
from util import CHILD_ENV

from trikern import selfcheck
from trikern.cli import main
from trikern.selfcheck import kernels as sk

# the modules, not the ops of the same names that trikern.kernels exports
rmsnorm = importlib.import_module("trikern.kernels.rmsnorm")
verify = importlib.import_module("trikern.kernels.verify")


def run(capsys, *args):
    rc = main(["selfcheck", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return rc, out, err


def test_dry_run_passes_every_check(tmp_path, capsys):
    j = tmp_path / "sc.json"
    rc, out, err = run(capsys, "--dry-run", "--json", j)
    assert rc == 0, out + err
    res = json.loads(j.read_text())
    status = {c["name"]: c["status"] for c in res["checks"]}
    for name in ("graphs/step-runner", "graphs/batch"):
        assert status.pop(name) == "SKIP"  # no CUDA here: skipped with the reason
    assert set(status.values()) == {"PASS"}, {k: v for k, v in status.items() if v != "PASS"}
    names = set(status)
    for want in ("attention/causal-ar", "attention/bidirectional-draft", "attention/quadratic", "attention/tree",
                 "rope", "rmsnorm", "swiglu", "verify/sampled", "reveal/greedy", "build_tree", "draft_tree",
                 "tree_verify", "quant_linear/int4", "quant_linear/fp8"):
        assert f"kernels/{want}" in names
    assert {"lossless/embedded", "lossless/triton-tiny", "synthetic/tiny"} <= names
    assert res["failed"] == 0 and res["skipped"] == 2 and res["passed"] == len(names)
    runs = next(c for c in res["checks"] if c["name"] == "lossless/triton-tiny")["data"]["runs"]
    assert {r["run"].split(" ")[0] for r in runs} == {"spec-linear", "spec-quadratic"} and all(r["equal"] for r in runs)
    table = next(c for c in res["checks"] if c["name"] == "synthetic/tiny")["data"]
    rows = table["rows"]
    assert [(r["context"], r["T"]) for r in rows] == [(c, t) for c in (16, 48) for t in (1, 2, 6)]
    for r in rows:  # counted under the interpreter, split evenly into 2 layers and the rest
        assert r["kernels"] == 2 * r["kernels_per_layer"] + r["kernels_non_layer"] and r["triton_launches"] > 0
        assert r["ms"] > 0 and r["pct_measured"] > 0
    assert "interpreter-counted" in table["kernels_counted"]
    assert "kernels/layer" in out and "selfcheck ok: " in out and "Triton interpreted" in out
    assert "SKIP  graphs/step-runner" in out and "SKIP  graphs/batch" in out and "CUDA graphs need a CUDA device" in out


@pytest.mark.parametrize("module,name,check", [(rmsnorm, "rmsnorm_ref", "kernels/rmsnorm"),
                                               (verify, "verify_ref", "kernels/verify/greedy")],
                         ids=["rmsnorm", "verify"])
def test_a_broken_reference_fails_its_check(capsys, monkeypatch, module, name, check):
    good = getattr(module, name)

    def broken(*a, **kw):
        out = good(*a, **kw)
        if name == "rmsnorm_ref":
            return out * 1.01
        tokens, count = out
        return tokens, count + 1

    monkeypatch.setattr(module, name, broken)
    rc, out, err = run(capsys, "--dry-run", "--only", f"{check},kernels/swiglu")
    assert rc == 1
    lines = {line.split()[1]: line for line in out.splitlines() if line.startswith(("PASS", "FAIL"))}
    assert lines[check].startswith("FAIL") and lines["kernels/swiglu"].startswith("PASS")
    assert "selfcheck FAILED: 1 passed, 1 failed" in out and f"failed: {check}" in out


def test_a_check_that_raises_is_a_failure_not_a_crash(monkeypatch):
    case = next(c for c in sk.CASES if c.name == "swiglu")

    def boom(k):
        raise RuntimeError("out of registers")

    monkeypatch.setattr(sk, "CASES", [sk.Case(case.name, boom)])
    [r] = selfcheck.run_checks(selfcheck.SHAPES["tiny"], torch.device("cpu"), "kernels", log=io.StringIO())
    assert r.status == "FAIL" and r.detail == "RuntimeError: out of registers"


def test_compare_tolerances():
    compare = sk.compare
    a = torch.ones(4)
    assert compare(a, a + 5e-5, torch.float32, False)[0] and not compare(a, a + 1e-3, torch.float32, False)[0]
    assert compare(a.bfloat16(), (a + 1e-2).bfloat16(), torch.bfloat16, False)[0]
    assert not compare(torch.tensor([1, 2]), torch.tensor([1, 3]), torch.float32, False)[0]  # ints: exact
    assert not compare((a, a), (a,), torch.float32, False)[0]
    assert compare(torch.tensor([float("inf")]), torch.tensor([float("inf")]), torch.float32, False)[0]


@pytest.mark.parametrize("args,needle", [
    ([], "no CUDA device"),
    (["--dry-run", "--shapes", "nld-8b"], "--dry-run runs tiny shapes"),
    (["--dry-run", "--only", "nope"], "--only: 'nope' matches no check"),
    (["--dry-run", "--device", "cuda"], "--dry-run runs on the CPU"),
    (["--dry-run", "--json", "."], "--json .: is a folder"),
])
def test_bad_options_are_one_error_line(capsys, monkeypatch, args, needle):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    rc, out, err = run(capsys, *args)
    assert rc == 2 and out == "" and err.count("\n") == 1 and err.startswith("trikern selfcheck: error: "), err
    assert needle in err, err


def test_list_names_the_checks(capsys):
    rc, out, _ = run(capsys, "--dry-run", "--list", "--only", "lossless,graphs")
    assert rc == 0 and out.split() == ["lossless/embedded", "lossless/triton-tiny", "graphs/step-runner",
                                       "graphs/batch"]


def test_without_the_interpreter_it_reruns_itself_under_it(tmp_path):
    j = tmp_path / "r.json"
    r = subprocess.run([sys.executable, "-m", "trikern", "selfcheck", "--dry-run", "--only", "kernels/rmsnorm",
                        "--json", str(j)], env=CHILD_ENV, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "selfcheck ok: 1 passed" in r.stdout and "Triton interpreted" in r.stdout
    assert json.loads(j.read_text())["checks"][0]["status"] == "PASS"
