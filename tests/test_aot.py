"""`trikern check-kernels`: AOT compiles for sm_80 / sm_90 without a GPU, run as a subprocess (it must
leave the interpreter), the table's rows, and a non-zero exit on spills or shared memory over the limit."""
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from trikern.kernels import aot, autotune

ROOT = Path(__file__).resolve().parents[1]
MINE = ("rope", "rmsnorm", "swiglu")


def check_kernels(*args, extra_path=None):
    env = dict(os.environ, TRITON_INTERPRET="1")  # the command must re-run itself without it
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(extra_path or ""), str(ROOT)]))
    out = subprocess.run([sys.executable, "-m", "trikern", "check-kernels", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=900)
    rows = [line.split() for line in out.stdout.splitlines() if re.match(r"sm_\d+\s", line)]
    return out, rows


def test_my_kernels_compile_clean_for_sm80_sm90():
    out, rows = check_kernels("--arch", "sm_80,sm_90", "--ops", ",".join(MINE))
    assert out.returncode == 0, out.stdout + out.stderr
    mods = [m for m in autotune.kernel_modules() if m.__name__.rsplit(".", 1)[-1] in MINE]
    for arch in (80, 90):
        names = sorted(v.kernel_name for m in mods for v in m.aot_variants(arch))
        assert sorted(r[1] for r in rows if r[0] == f"sm_{arch}") == names
    for arch, kernel, config, regs, spill, shared, family, status in rows:
        assert 0 < int(regs) <= 255 and spill == "0" and family == "none" and status == "ok", (kernel, config)
        assert 0 <= int(shared) <= autotune.smem_limit(int(arch[3:]))
        assert "num_warps=" in config
    assert f"{len(rows)} compiles over sm_80, sm_90: all ok" in out.stdout


BAD_MODULE = '''
import triton
import triton.language as tl

from trikern.kernels.aot import AotVariant


@triton.jit
def dot_kernel(a_ptr, b_ptr, c_ptr, K, BM: tl.constexpr, BN: tl.constexpr, BK: tl.constexpr):
    rm, rn, rk = tl.arange(0, BM), tl.arange(0, BN), tl.arange(0, BK)
    acc = tl.zeros([BM, BN], dtype=tl.float32)
    for k in range(0, K, BK):
        a = tl.load(a_ptr + rm[:, None] * K + (k + rk)[None, :])
        b = tl.load(b_ptr + (k + rk)[:, None] * BN + rn[None, :])
        acc += tl.dot(a, b)
    tl.store(c_ptr + rm[:, None] * BN + rn[None, :], acc)


@triton.jit
def transpose_kernel(x_ptr, y_ptr, B: tl.constexpr):
    r = tl.arange(0, B)
    x = tl.load(x_ptr + r[:, None] * B + r[None, :])
    tl.store(y_ptr + r[:, None] * B + r[None, :], tl.trans(x))


def aot_variants(arch):
    dot = {"a_ptr": "*fp16", "b_ptr": "*fp16", "c_ptr": "*fp32", "K": "i32"}
    meta = {"BM": 64, "BN": 64, "BK": 32}
    return [
        AotVariant("dot_ok", dot_kernel, dot, meta, {**meta, "num_warps": 4, "num_stages": 2}),
        AotVariant("dot_spill", dot_kernel, dot, meta, {**meta, "num_warps": 4, "maxnreg": 64}),
        AotVariant("transpose_smem", transpose_kernel, {"x_ptr": "*fp32", "y_ptr": "*fp32"}, {"B": 256},
                   {"B": 256, "num_warps": 16}),
    ] + ([AotVariant("dot_fail", dot_kernel, dot, meta, {**meta, "num_warps": 4, "maxnreg": 32})]
         if arch == 90 else [])  # ptxas refuses wgmma with 32 registers
'''


def test_spills_and_shared_overflow_fail(tmp_path):
    (tmp_path / "aot_bad_kernels.py").write_text(textwrap.dedent(BAD_MODULE))
    out, rows = check_kernels("--arch", "sm_80,sm_90", "--module", "aot_bad_kernels", extra_path=tmp_path)
    assert out.returncode == 1, out.stdout + out.stderr
    by = {(r[0], r[1]): r for r in rows}
    assert set(by) == {(f"sm_{a}", k) for a in (80, 90) for k in ("dot_ok", "dot_spill", "transpose_smem")} | {
        ("sm_90", "dot_fail")}
    assert by["sm_80", "dot_ok"][6:] == ["mma.sync", "ok"]
    assert by["sm_90", "dot_ok"][6:] == ["wgmma", "ok"]
    for arch in ("sm_80", "sm_90"):
        spill = by[arch, "dot_spill"]
        assert int(spill[4]) > 0 and "spills" in " ".join(spill[7:])
        smem = by[arch, "transpose_smem"]
        assert int(smem[5]) > autotune.smem_limit(int(arch[3:])) and "shared" in " ".join(smem[7:])
    fail = by["sm_90", "dot_fail"]
    assert fail[3:7] == ["-1", "-1", "-1", "?"] and "compile failed" in " ".join(fail[7:])
    assert "register" in " ".join(fail[7:]).lower()  # ptxas's reason, not the PTX dump
    assert ".version" not in out.stdout
    assert "5 FAILED" in out.stdout


def test_helpers():
    assert aot.parse_archs("sm_80, sm_90,121,sm_90") == [80, 90, 121]
    assert aot.parse_archs("sm_86", supported=[80, 86]) == [86]
    for bad, match in (("hopper", "not like sm_80"), ("sm_999", "not a supported target"),
                       ("sm_70", "need sm_80 or newer"), (" , ", "names no arch"), ("sm_90", "supported: sm_80$")):
        with pytest.raises(aot.UsageError, match=match):
            aot.parse_archs(bad, supported=[80])
    assert {80, 90, 121} <= set(aot.supported_archs()) <= {a for a in autotune.SMEM_LIMIT if a >= 80}
    assert aot.instruction_family("wgmma.mma_async.sync") == "wgmma"
    assert aot.instruction_family("mma.sync.aligned.m16n8k16") == "mma.sync"
    assert aot.instruction_family("fma.rn.f32") == "none"
    table = aot.format_table([aot.Row(90, "k", "BLOCK=1", 40, 0, 0, "none"),
                              aot.Row(80, "k", "BLOCK=2", 41, 8, 0, "none", "spills 8 B")])
    lines = table.splitlines()
    assert lines[0].split()[:3] == ["arch", "kernel", "config"] and lines[2].endswith("spills 8 B")


@pytest.mark.parametrize("args, message", [
    (["--arch", "sm_999"], "--arch 'sm_999' is not a supported target; supported: sm_80, "),
    (["--arch", "sm_70"], "--arch 'sm_70' is not a supported target (the kernels need sm_80 or newer)"),
    (["--arch", ""], "--arch '' names no arch; supported: sm_80, "),
    (["--arch", "hopper"], "--arch 'hopper' is not like sm_80, sm_90 or sm_121"),
    (["--ops", "bogus"], "--ops: unknown op bogus; known: attention, draft_tree, fused_linear, quant_linear, "
                         "reveal, rmsnorm, "
                         "rope, swiglu, tree, verify"),
    (["--ops", ""], "--ops '' selects no op; known: attention, "),
    (["--module", "no_such_module_xyz"], "--module 'no_such_module_xyz' does not import: ModuleNotFoundError"),
    (["--module", "json"], "--module 'json' defines no aot_variants(arch)"),
])
def test_bad_options_are_one_error_line(args, message):
    """The `trikern` command itself, as a user runs it: one error line, exit 2, nothing compiled
    (sm_999 used to abort inside LLVM, sm_70 to end in a traceback, the empty ones in '0 compiles')."""
    env = dict(os.environ, TRITON_INTERPRET="1", PYTHONPATH=str(ROOT))
    out = subprocess.run([sys.executable, "-m", "trikern", "check-kernels", *args], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stdout + out.stderr
    assert out.stdout == ""
    assert out.stderr.splitlines() == [out.stderr.strip()], out.stderr  # one line
    assert out.stderr.startswith(f"trikern check-kernels: error: {message}"), out.stderr
