"""Compile every kernel x config ahead of time for GPU archs, no GPU needed (`trikern check-kernels`,
whose command line is trikern/cli/check_kernels.py).

Each kernel module in trikern/kernels/ may define `aot_variants(arch) -> list[AotVariant]`: the
kernel, its argument types, constexprs and launch config for every config it can launch with on that
arch. Each is compiled with `triton.compile` for the target, and a table reports registers and
local-memory bytes (spills) from the cubin via the wheel's `cuobjdump -res-usage` (it works on cached
compiles too, unlike TRITON_DUMP_PTXAS_LOG, which prints only on a cache miss), shared memory from
the compile metadata, and the tensor-core instruction family found in the PTX. The exit status is
non-zero on any compile failure, spill, or shared memory over the arch's limit.

Compilation must not run under TRITON_INTERPRET; when it is set, the command re-runs itself in a
child process without it (after checking its options, so a bad one is reported once).

A bad selection (an arch that is not a supported target, an unknown op, an empty selection) is a
`UsageError`, raised before anything is compiled; the command prints it as one line
`trikern check-kernels: error: ...` and exits 2.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import io
import re
import subprocess
import tempfile
from dataclasses import dataclass, field

from .dispatch import FP_FUSION

DEFAULT_ARCHS = (80, 90, 121)
MIN_ARCH = 80  # the kernels use bf16 tensor cores and cp.async: Ampere or newer
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


class UsageError(ValueError):
    """A bad selection (arch, op, module): the command prints it as one `error:` line and exits 2."""


@functools.lru_cache(maxsize=None)
def _ptxas_targets(path: str) -> frozenset[str] | None:
    """The sm_XX names a ptxas binary lists for --gpu-name, or None if it cannot be asked."""
    try:
        out = subprocess.run([path, "--help"], capture_output=True, text=True, timeout=60).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return frozenset(re.findall(r"\bsm_\d+", out)) or None


def _triton_can_target(arch: int) -> bool:
    """Whether the ptxas that triton's NVIDIA backend uses for `arch` (a separate Blackwell build
    from sm_100 on, where the wheel has one) accepts it; True when that cannot be determined."""
    try:
        import triton
        nv = triton.knobs.nvidia
        tool = (getattr(nv, "ptxas_blackwell", None) if arch >= 100 else None) or nv.ptxas
        targets = _ptxas_targets(tool.path)
    except Exception:  # noqa: BLE001 -- no way to ask: let the compile itself report
        return True
    return targets is None or f"sm_{arch}" in targets


def supported_archs() -> list[int]:
    """The archs check-kernels accepts: those with a known shared-memory limit (autotune.SMEM_LIMIT),
    sm_80 or newer, that this triton can compile for."""
    from .autotune import SMEM_LIMIT
    return [a for a in sorted(SMEM_LIMIT) if a >= MIN_ARCH and _triton_can_target(a)]


def parse_archs(text: str, supported: list[int] | None = None) -> list[int]:
    """'sm_80,sm_90' -> [80, 90]; UsageError for a malformed, unsupported or empty list."""
    supported = supported_archs() if supported is None else supported
    names = ", ".join(f"sm_{a}" for a in supported)
    archs = []
    for part in (p.strip() for p in text.split(",") if p.strip()):
        m = re.fullmatch(r"(?:sm_?)?(\d+)", part)
        if not m:
            raise UsageError(f"--arch {part!r} is not like sm_80, sm_90 or sm_121")
        arch = int(m.group(1))
        if arch not in supported:
            why = f" (the kernels need sm_{MIN_ARCH} or newer)" if arch < MIN_ARCH else ""
            raise UsageError(f"--arch {part!r} is not a supported target{why}; supported: {names}")
        if arch not in archs:
            archs.append(arch)
    if not archs:
        raise UsageError(f"--arch {text!r} names no arch; supported: {names}")
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
    opts["enable_fp_fusion"] = FP_FUSION  # what every launch passes
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


def select_modules(ops: str | None, extra_modules: list[str] = ()) -> list[object]:
    """The modules whose aot_variants to compile: trikern.kernels' own (those named by `ops`, a
    comma-separated string; all when None, none when only `extra_modules` are given), then each
    importable module named in `extra_modules`. UsageError for an unknown op, an empty --ops, a
    module that does not import or has no aot_variants."""
    from .autotune import modules_with, select_ops
    own = modules_with("aot_variants")
    if ops is None and extra_modules:
        names = []
    else:
        names, problem = select_ops(ops, own)
        if problem:
            raise UsageError(problem)
    mods = [own[n] for n in names]
    for name in extra_modules:
        try:
            mod = importlib.import_module(name)
        except Exception as e:  # noqa: BLE001 -- any import failure is the option's fault
            raise UsageError(f"--module {name!r} does not import: {type(e).__name__}: {e}") from None
        if not callable(getattr(mod, "aot_variants", None)):
            raise UsageError(f"--module {name!r} defines no aot_variants(arch)")
        mods.append(mod)
    return mods


def kernel_variants(arch: int, modules: list[object]):
    """(module name, variant) for every variant the modules' aot_variants(arch) return."""
    for mod in modules:
        for v in mod.aot_variants(arch):
            yield mod.__name__.rsplit(".", 1)[-1], v


def format_table(rows: list[Row]) -> str:
    head = ("arch", "kernel", "config", "regs", "spill_B", "shared_B", "family", "status")
    body = [(f"sm_{r.arch}", r.kernel, r.config, str(r.registers), str(r.spill_bytes), str(r.shared),
             r.family, r.problem or "ok") for r in rows]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(len(head))]
    return "\n".join("  ".join(s.ljust(w) for s, w in zip(line, widths)).rstrip() for line in [head, *body])


def compile_all(archs: list[int], modules: list[object]) -> list[Row]:
    """One row per (arch, variant) of the modules' aot_variants, compiled (not under TRITON_INTERPRET)."""
    return [compile_variant(v, arch) for arch in archs for _, v in kernel_variants(arch, modules)]
