"""`trikern selfcheck`: prove a GPU in one command (kernels vs references, spec == AR, CUDA graphs ==
eager, the roofline table with kernel counts); trikern/selfcheck/ runs the checks.

A PASS / FAIL / SKIP line per check, then the table and a summary; exit status 1 when a check
failed, 2 for a bad option. `--shapes tiny` (or `--dry-run`, which also forces the CPU) runs the same
checks at tiny shapes; on a CPU the Triton kernels need TRITON_INTERPRET=1 set before triton is
imported, so the command then re-runs itself in a child process with it (trikern sets no
environment variable in its own process).
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

PROG = "trikern selfcheck"


def add_parser(sub):
    p = sub.add_parser("selfcheck", help="prove a GPU: kernels vs references, spec == AR, CUDA graphs == eager, "
                       "the roofline table with kernel counts",
                       description="Run every kernel against its PyTorch reference at NLD-8B shapes, check that "
                       "self-speculation equals AR token for token and that CUDA graphs replay what eager runs, "
                       "and print the synthetic NLD-8B roofline table with kernels per forward. "
                       "Exit status 1 when a check fails.", one_line_errors=True)
    p.add_argument("--shapes", choices=["nld-8b", "tiny"], default=None,
                   help="nld-8b (default on CUDA) or tiny (the CPU dry run; any device)")
    p.add_argument("--dry-run", action="store_true", help="tiny shapes on the CPU under the Triton interpreter "
                   "(= --shapes tiny --device cpu)")
    p.add_argument("--device", default=None, help="cuda | cuda:N | cpu (default: cuda when available)")
    p.add_argument("--only", metavar="A,B", help="comma-separated check groups (kernels, lossless, graphs, "
                   "synthetic), names or name prefixes (e.g. kernels/attention)")
    p.add_argument("--no-tune", action="store_true", help="do not autotune the table's forwards (the other checks "
                   "never tune): faster on a first run, the path is then each op's first config")
    p.add_argument("--list", action="store_true", help="print the checks' names and exit")
    p.add_argument("--json", metavar="FILE", help="write every result as JSON (atomically)")
    return p


def _error(msg: str) -> int:
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return 2


def run(a) -> int:
    import torch  # noqa: PLC0415

    from .. import files, selfcheck  # noqa: PLC0415
    from ..kernels.dispatch import interpreting  # noqa: PLC0415

    if a.dry_run and a.shapes == "nld-8b":
        return _error("--dry-run runs tiny shapes: drop --shapes nld-8b")
    if a.dry_run and a.device not in (None, "cpu"):
        return _error(f"--dry-run runs on the CPU: drop --device {a.device}")
    if a.json is not None and Path(a.json).is_dir():
        return _error(f"--json {a.json}: is a folder; pass a file name")
    try:
        device = torch.device(a.device or ("cpu" if a.dry_run or not torch.cuda.is_available() else "cuda"))
    except RuntimeError as e:
        return _error(f"--device {a.device}: {e}")
    if device.type not in ("cuda", "cpu"):
        return _error(f"--device {a.device}: expected cuda, cuda:N or cpu")
    if device.type == "cuda" and not torch.cuda.is_available():
        return _error(f"--device {a.device}: no CUDA device here (--dry-run checks at tiny shapes on the CPU)")
    name = a.shapes or ("tiny" if a.dry_run else "nld-8b")
    if device.type == "cpu" and name != "tiny":
        return _error("no CUDA device: the NLD-8B shapes need a GPU; --dry-run (or --shapes tiny) runs the same "
                      "checks at tiny shapes on the CPU under the Triton interpreter")
    shapes = selfcheck.SHAPES[name]
    try:
        chosen = selfcheck.select(selfcheck.checks(shapes), a.only)
    except ValueError as e:
        return _error(str(e))
    if a.list:
        print("\n".join(c.name for c in chosen))
        return 0
    if device.type == "cpu" and not interpreting():
        return _rerun_interpreted(a, name)
    if device.type == "cuda" and interpreting():
        return _error("TRITON_INTERPRET is set: unset it to check the GPU's compiled kernels")
    t0 = time.perf_counter()
    results = selfcheck.run_checks(shapes, device, a.only, tune=not a.no_tune)
    wall = time.perf_counter() - t0
    table = next((r.data.get("table") for r in results if r.name.startswith("synthetic/") and r.data), None)
    if table:
        print(table)
    for r in results:
        print(r.line())
    print(selfcheck.summary(results, shapes, device, wall))
    if a.json:
        from ..bench import report  # noqa: PLC0415

        files.write_json(a.json, {"shapes": name, "device": str(device),
                                  "env": report.environment(device, shapes.dtype), "wall_s": round(wall, 3),
                                  "passed": sum(r.status == "PASS" for r in results),
                                  "failed": sum(r.status == "FAIL" for r in results),
                                  "skipped": sum(r.status == "SKIP" for r in results),
                                  "checks": [vars(r) for r in results]}, indent=2, default=str)
    return 1 if any(r.status == "FAIL" for r in results) else 0


def _rerun_interpreted(a, name: str) -> int:
    """The same command in a child process with TRITON_INTERPRET=1 (it must be set before triton is
    imported, and this process has imported it)."""
    argv = ["--shapes", name, "--device", "cpu"]
    for opt, v in (("--only", a.only), ("--json", a.json)):
        if v is not None:
            argv += [opt, str(v)]
    if a.no_tune:
        argv.append("--no-tune")
    env = {**os.environ, "TRITON_INTERPRET": "1"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "trikern", "selfcheck", *argv], env=env).returncode
