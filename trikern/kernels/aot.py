"""`trikern check-kernels`: compile every kernel x config ahead of time for GPU archs, no GPU needed.

Each kernel module in trikern/kernels/ may define `aot_variants(arch) -> list[AotVariant]`: the
kernel, its argument types, constexprs and launch config for every config it can launch with on that
arch. Each is compiled with `triton.compile` for the target, and a table reports registers and
local-memory bytes (spills) from the cubin via the wheel's `cuobjdump -res-usage` (it works on cached
compiles too, unlike TRITON_DUMP_PTXAS_LOG, which prints only on a cache miss), shared memory from
the compile metadata, and the tensor-core instruction family found in the PTX. The exit status is
non-zero on any compile failure, spill, or shared memory over the arch's limit.

Compilation must not run under TRITON_INTERPRET; when it is set, main() re-runs itself in a child
process without it.
"""
from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

from .dispatch import interpreting

DEFAULT_ARCHS = (80, 90, 121)
_LAUNCH_OPTIONS = ("num_warps", "num_stages", "num_ctas", "maxnreg")


@dataclass(frozen=True)
class AotVariant:
    """One compile of one kernel: what a launcher would launch with `config` on some arch."""
    kernel_name: str
    fn: object                # a triton JITFunction
    signature: dict           # arg name -> triton type string ("*bf16", "i32", "fp32", ...)
    constexprs: dict          # constexpr arg name -> value
    config: dict = field(default_factory=dict)  # the launch config, incl. num_warps / num_stages
    # arg name -> triton attribute list, e.g. [["tt.divisibility", 16]]: the facts the JIT derives at
    # launch time (16-byte aligned pointers, strides divisible by 16). Without them the compile is not
    # the one that runs: no vectorised loads, and spills that never happen on the device.
    attrs: dict = field(default_factory=dict)


@dataclass
class Row:
    arch: int
    kernel: str
    config: str
    registers: int = -1
    spill_bytes: int = -1
    shared: int = -1
    family: str = "?"
    problem: str = ""


def parse_archs(text: str) -> list[int]:
    archs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(?:sm_?)?(\d+)", part)
        if not m:
            raise SystemExit(f"trikern check-kernels: --arch {part!r} is not like sm_80, sm_90 or sm_121")
        archs.append(int(m.group(1)))
    return archs


def instruction_family(ptx: str) -> str:
    if "tcgen05.mma" in ptx:
        return "tcgen05"
    if "wgmma" in ptx:
        return "wgmma"
    if "mma.sync" in ptx:
        return "mma.sync"
    return "none"


def res_usage(cubin: bytes, name: str) -> tuple[int, int]:
    """(registers, local-memory bytes) of kernel `name` in a cubin, from cuobjdump -res-usage."""
    import triton
    tool = triton.knobs.nvidia.cuobjdump.path
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([tool, "-res-usage", f.name], capture_output=True, text=True, check=True).stdout
    blocks = re.split(r"^\s*Function ", out, flags=re.MULTILINE)[1:]
    for b in blocks:
        fname, _, body = b.partition(":")
        if fname.strip() == name or len(blocks) == 1:
            regs = int(re.search(r"REG:(\d+)", body).group(1))
            local = int(re.search(r"LOCAL:(\d+)", body).group(1)) + int(re.search(r"STACK:(\d+)", body).group(1))
            return regs, local
    raise RuntimeError(f"cuobjdump found no function {name!r} in the cubin:\n{out}")


def compile_variant(v: AotVariant, arch: int) -> Row:
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from .autotune import smem_limit

    row = Row(arch, v.kernel_name, ",".join(f"{k}={val}" for k, val in v.config.items()))
    sig = dict(v.signature)
    for name in v.fn.arg_names:  # constexprs appear in the signature as such
        if name in v.constexprs:
            sig[name] = "constexpr"
    missing = [n for n in v.fn.arg_names if n not in sig]
    if missing:
        row.problem = f"signature lacks {', '.join(missing)}"
        return row
    opts = {k: v.config[k] for k in _LAUNCH_OPTIONS if k in v.config}
    opts["enable_fp_fusion"] = True  # the runtime default in triton 3.9
    chatter = io.StringIO()  # triton prints the whole PTX when ptxas fails; the row says why instead
    try:
        with contextlib.redirect_stdout(chatter):
            c = triton.compile(ASTSource(v.fn, sig, dict(v.constexprs),
                                             {(v.fn.arg_names.index(k),): a for k, a in v.attrs.items()}), target=GPUTarget("cuda", arch, 32),
                               options=opts)
    except Exception as e:  # noqa: BLE001 -- any compile failure is a row of the report, not a crash
        lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
        why = next((ln for ln in lines if "fatal" in ln or "error" in ln.lower()), lines[0] if lines else "")
        fatal = next((ln for ln in lines if "fatal" in ln), None)
        row.problem = f"compile failed: {type(e).__name__}: {fatal or why}"
        return row
    row.shared = int(c.metadata.shared)
    row.family = instruction_family(c.asm["ptx"])
    row.registers, row.spill_bytes = res_usage(c.asm["cubin"], c.metadata.name)
    problems = []
    if row.spill_bytes:
        problems.append(f"spills {row.spill_bytes} B to local memory")
    if row.shared > smem_limit(arch):
        problems.append(f"shared {row.shared} B > sm_{arch} limit {smem_limit(arch)} B")
    row.problem = "; ".join(problems)
    return row


def kernel_variants(arch: int, ops: set[str], extra_modules: list[str] = ()):
    """(module name, variant) for every kernel module that defines aot_variants.

    trikern.kernels' own modules (filtered by `ops` when given; skipped when only extra modules are
    named), then each importable module named in `extra_modules`.
    """
    from .autotune import kernel_modules
    mods = [] if extra_modules and not ops else [
        m for m in kernel_modules() if not ops or m.__name__.rsplit(".", 1)[-1] in ops]
    mods += [importlib.import_module(name) for name in extra_modules]
    for mod in mods:
        if hasattr(mod, "aot_variants"):
            for v in mod.aot_variants(arch):
                yield mod.__name__.rsplit(".", 1)[-1], v


def format_table(rows: list[Row]) -> str:
    head = ("arch", "kernel", "config", "regs", "spill_B", "shared_B", "family", "status")
    body = [(f"sm_{r.arch}", r.kernel, r.config, str(r.registers), str(r.spill_bytes), str(r.shared),
             r.family, r.problem or "ok") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(s.ljust(w) for s, w in zip(line, widths)).rstrip() for line in [head, *body])


def _reexec_without_interpreter(argv: list[str]) -> int:
    env = {k: val for k, val in os.environ.items() if k != "TRITON_INTERPRET"}
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join([root, *filter(None, [env.get("PYTHONPATH")])])
    return subprocess.run([sys.executable, "-m", "trikern.kernels.aot", *argv], env=env).returncode


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(prog="trikern check-kernels",
                                description="AOT-compile every kernel x config for GPU archs (no GPU needed).")
    p.add_argument("--arch", default=",".join(f"sm_{a}" for a in DEFAULT_ARCHS),
                   help="comma-separated targets (default: sm_80,sm_90,sm_121)")
    p.add_argument("--ops", default="", help="comma-separated kernel modules to check (default: all)")
    p.add_argument("--module", action="append", default=[],
                   help="also check this importable module's aot_variants (repeatable); with --module and "
                        "no --ops, only the named modules are checked")
    args = p.parse_args(argv)
    archs = parse_archs(args.arch)
    if interpreting():
        return _reexec_without_interpreter(argv)
    ops = {s.strip() for s in args.ops.split(",") if s.strip()}
    rows = []
    for arch in archs:
        for _, v in kernel_variants(arch, ops, args.module):
            rows.append(compile_variant(v, arch))
    print(format_table(rows))
    bad = [r for r in rows if r.problem]
    print(f"\n{len(rows)} compiles over {', '.join(f'sm_{a}' for a in archs)}: "
          f"{'all ok' if not bad else f'{len(bad)} FAILED'}")
    return 1 if bad or not rows else 0


if __name__ == "__main__":
    sys.exit(main())
