"""`trikern check-kernels`: AOT-compile every kernel x config for GPU archs (kernels/aot.py), no GPU needed.

Compilation must not run under TRITON_INTERPRET: when it is set, the command checks its options, then
re-runs itself in a child process without it (so a bad option is reported once).
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from ..kernels.aot import DEFAULT_ARCHS

PROG = "trikern check-kernels"


def add_parser(sub):
    k = sub.add_parser("check-kernels", help="AOT-compile every kernel x config for GPU archs (no GPU needed)",
                       description="Compile each kernel and shipped config for the given archs, print registers, "
                       "spills, shared memory and instruction family; exit 1 on spills or shared memory over limit.")
    k.add_argument("--arch", default=None,
                   help=f"comma-separated targets (default: {','.join(f'sm_{a}' for a in DEFAULT_ARCHS)}; "
                        "any of the supported ones listed by an unknown --arch)")
    k.add_argument("--ops", default=None, help="comma-separated kernel modules to check (default: all)")
    k.add_argument("--module", action="append", default=[],
                   help="also check this importable module's aot_variants (repeatable); with --module and "
                        "no --ops, only the named modules are checked")
    return k


def run(a) -> int:
    from ..kernels import aot  # noqa: PLC0415
    from ..kernels.dispatch import interpreting  # noqa: PLC0415

    try:
        archs = list(aot.DEFAULT_ARCHS) if a.arch is None else aot.parse_archs(a.arch)
        modules = aot.select_modules(a.ops, a.module)
    except aot.UsageError as e:
        print(f"{PROG}: error: {e}", file=sys.stderr)
        return 2
    if interpreting():
        return _rerun_without_interpreter(a)
    rows = aot.compile_all(archs, modules)
    if not rows:
        print(f"{PROG}: error: the selection has no kernel to compile for "
              f"{', '.join(f'sm_{a}' for a in archs)}", file=sys.stderr)
        return 2
    print(aot.format_table(rows))
    bad = [r for r in rows if r.problem]
    print(f"\n{len(rows)} compiles over {', '.join(f'sm_{a}' for a in archs)}: "
          f"{'all ok' if not bad else f'{len(bad)} FAILED'}")
    return 1 if bad else 0


def _rerun_without_interpreter(a) -> int:
    argv = ([] if a.arch is None else ["--arch", a.arch]) + ([] if a.ops is None else ["--ops", a.ops])
    for name in a.module:
        argv += ["--module", name]
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "trikern", "check-kernels", *argv], env=env).returncode
