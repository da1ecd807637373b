"""Weight-only quantized linear: the formats of kernels/qweight.py (pack / unpack, quantization
error bounds, cat_rows, validation), the reference against dequantize math, the Triton kernel under
the interpreter against the reference (every config, row / shape / group / dtype sweeps, strided
inputs, bad input), the CPU path against the reference, and the benchmark script's smoke run."""
import importlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from util import aot_rows

import trikern.kernels as K
from trikern.kernels.cpu import linear as cpu_linear
from trikern.kernels.cpu import quant_linear as CQ
from trikern.kernels.qweight import (Fp8Weight, Int4Weight, cat_rows, check_weight, dequantize, pack_int4,
                                     quantize_fp8, quantize_int4, unpack_int4)

Q = importlib.import_module("trikern.kernels.quant_linear")
ROOT = Path(__file__).resolve().parents[1]

# |got - want| <= atol * max|want| + rtol * |want|. The kernel's products are exact (x times an
# integer in [-15, 15] or an fp8 value, in fp32) and scaled in fp32: it differs from the reference
# by summation order and the final rounding (the interpreter truncates bf16: one ulp).
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-5, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-5, rtol=2 ** -7),
}


def gen(seed):
    return torch.Generator().manual_seed(seed)


def weight(kind: str, N: int, K_: int, group: int = 64, seed: int = 0, scale_dtype=torch.float16):
    """kind: "int4" (symmetric), "int4z" (zero points) or "fp8"."""
    W = torch.randn(N, K_, generator=gen(seed)) / K_ ** 0.5
    if kind == "fp8":
        return quantize_fp8(W)
    return quantize_int4(W, group, symmetric=kind == "int4", scale_dtype=scale_dtype)


def acts(shape, dtype, seed=1):
    return torch.randn(*shape, generator=gen(seed)).to(dtype)


def check(got, want, dtype):
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    tol = TOL[dtype]
    torch.testing.assert_close(got.float(), want.float(), rtol=tol["rtol"],
                               atol=tol["atol"] * max(want.float().abs().max().item(), 1e-30))


# ------------------------------------------------------------------------------------------------
# qweight: the formats
# ------------------------------------------------------------------------------------------------
def test_pack_unpack_round_trip_and_nibble_order():
    q = torch.randint(0, 16, (5, 48), generator=gen(0), dtype=torch.uint8)
    packed = pack_int4(q)
    assert packed.dtype == torch.int32 and packed.shape == (5, 6)
    assert torch.equal(unpack_int4(packed), q)
    # nibble j of word c is column 8c + j; a 15 in the top nibble makes the word negative
    one = torch.zeros(1, 16, dtype=torch.uint8)
    one[0, 9], one[0, 7] = 3, 15
    words = pack_int4(one)
    assert words[0, 1].item() == 3 << 4 and words[0, 0].item() == (15 << 28) - (1 << 32)
    with pytest.raises(ValueError, match="multiple of 8"):
        pack_int4(torch.zeros(2, 12, dtype=torch.uint8))


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("symmetric", [True, False])
def test_int4_quantization_error_is_half_a_step(group, symmetric):
    W = torch.randn(7, 2 * group, generator=gen(group)) * 3
    W[0, :group] = 0.0  # an all-zero group: scale clamped, no NaN
    w = quantize_int4(W, group, symmetric=symmetric, scale_dtype=torch.float32)
    assert w.shape == (7, 2 * group) and w.group == group and (w.zeros is None) == symmetric
    q = unpack_int4(w.packed)
    assert q.max() <= 15 and (not symmetric or q.min() >= 1)  # symmetric uses -7..7 (+8)
    err = (dequantize(w) - W).abs().view(7, 2, group)
    assert torch.all(err <= w.scales[..., None] * (0.5 + 1e-5) + 1e-7)
    assert torch.isfinite(dequantize(w)).all()
    assert w.nbytes == 7 * 2 * group // 2 + w.scales.numel() * 4 + (0 if symmetric else w.zeros.numel())


def test_int4_zero_point_eight_is_symmetric():
    w = quantize_int4(torch.randn(4, 64, generator=gen(2)), 32, scale_dtype=torch.float32)
    explicit = Int4Weight(w.packed, w.scales, torch.full((4, 2), 8, dtype=torch.uint8), 32)
    assert torch.equal(dequantize(w), dequantize(explicit))


def test_fp8_quantization_error():
    W = torch.randn(9, 100, generator=gen(3))
    W[1] *= 1e-3  # rows of very different ranges: one scale each
    W[2, :50] = 1e-9  # subnormal in fp8 after scaling
    w = quantize_fp8(W)
    assert w.weight.dtype == torch.float8_e4m3fn and w.scale.dtype == torch.float32 and w.shape == (9, 100)
    assert torch.allclose(w.weight.float().abs().amax(1), torch.full((9,), 448.0))
    err = (dequantize(w) - W).abs()
    # 3 mantissa bits: half an ulp is 2^-4 of the value; below fp8's normals, half the smallest subnormal
    assert torch.all(err <= torch.maximum(W.abs() * 2 ** -4, w.scale[:, None] * 2 ** -10) * (1 + 1e-6))


@pytest.mark.parametrize("kind", ["int4", "int4z", "fp8"])
def test_cat_rows_stacks_outputs(kind):
    ws = [weight(kind, n, 64, 32, seed=n) for n in (16, 8, 24)]
    fused = cat_rows(ws)
    assert type(fused) is type(ws[0]) and fused.shape == (48, 64)
    assert torch.equal(dequantize(fused), torch.cat([dequantize(w) for w in ws]))


def test_cat_rows_refuses_mixed_weights():
    with pytest.raises(ValueError, match="different formats"):
        cat_rows([weight("int4", 8, 64), weight("fp8", 8, 64)])
    with pytest.raises(ValueError, match="group sizes"):
        cat_rows([weight("int4", 8, 64, 32), weight("int4", 8, 64, 64)])
    with pytest.raises(ValueError, match="zero-point"):
        cat_rows([weight("int4", 8, 64, 32), weight("int4z", 8, 64, 32)])


def test_quantize_int4_rejects_bad_group():
    with pytest.raises(ValueError, match="group=48 must divide K=64"):
        quantize_int4(torch.randn(2, 64), 48)


def _bad_weights():
    w = weight("int4z", 8, 64, 32)
    f = weight("fp8", 8, 64)
    return [
        (Int4Weight(w.packed.to(torch.int64), w.scales, w.zeros, 32), "packed must be a 2-D int32"),
        (Int4Weight(w.packed, w.scales, w.zeros, 48), r"group=48 must be a positive multiple of 8 dividing K=64"),
        (Int4Weight(w.packed, w.scales, w.zeros, 12), r"group=12"),
        (Int4Weight(w.packed, w.scales[:, :1], w.zeros, 32), r"scales must be .*\[N=8, K // group=2\]"),
        (Int4Weight(w.packed, w.scales.int(), w.zeros, 32), r"scales must be float32/float16/bfloat16"),
        (Int4Weight(w.packed, w.scales, w.zeros.int(), 32), r"zeros must be None or uint8"),
        (Fp8Weight(f.weight.float(), f.scale), r"weight must be a 2-D float8_e4m3fn"),
        (Fp8Weight(f.weight, f.scale.half()), r"scale must be float32 \[N=8\]"),
        (Fp8Weight(f.weight, f.scale[:3]), r"scale must be float32 \[N=8\]"),
    ]


@pytest.mark.parametrize("i", range(9))
def test_check_weight_names_the_field(i):
    w, match = _bad_weights()[i]
    with pytest.raises(ValueError, match=match):
        check_weight(w, "layer 3 q_proj")
    with pytest.raises(ValueError, match="^layer 3 q_proj: "):
        check_weight(w, "layer 3 q_proj")
    with pytest.raises(TypeError, match="expected Int4Weight or Fp8Weight"):
        check_weight(torch.zeros(2, 2), "x")


# ------------------------------------------------------------------------------------------------
# the reference
# ------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind", ["int4", "int4z", "fp8"])
@pytest.mark.parametrize("dtype", list(TOL))
def test_reference_is_dequantize_then_matmul(kind, dtype):
    w = weight(kind, 24, 128, 32)
    x = acts((2, 3, 128), dtype)
    got = Q.quant_linear_ref(x, w)
    want = torch.einsum("abk,nk->abn", x.double(), dequantize(w).double()).to(dtype)
    assert got.dtype == dtype and got.shape == (2, 3, 24)
    torch.testing.assert_close(got.float(), want.float(), rtol=TOL[dtype]["rtol"], atol=1e-5)
    assert torch.equal(K.quant_linear(x, w, backend="torch"), got)


# ------------------------------------------------------------------------------------------------
# the Triton kernel, under the interpreter
# ------------------------------------------------------------------------------------------------
FMT = {"int4": Q.INT4, "int4z": Q.INT4, "fp8": Q.FP8}


@pytest.mark.parametrize("kind, group", [("int4", 64), ("int4z", 32), ("fp8", 0)])
@pytest.mark.parametrize("M", [1, 9, 73])
def test_every_config(kind, group, M):
    w = weight(kind, 67, 256, group or 64, seed=M)  # odd N: a partial output tile
    x = acts((M, 256), torch.float16, seed=M)
    want = Q.quant_linear_ref(x, w)
    configs = Q.config_space(M)
    assert any(c["SPLIT_K"] > 1 for c in configs) and any(c["DOT"] for c in configs)
    for c in configs:
        cfg = Q.fit_config(c, FMT[kind], group, 256)
        check(Q.quant_linear_triton(x, w, config=cfg), want, torch.float16)


@pytest.mark.parametrize("M", [1, 2, 7, 8, 9, 16, 72, 73])
@pytest.mark.parametrize("kind", ["int4z", "fp8"])
def test_rows_through_autotune(M, kind):
    w = weight(kind, 37, 128, 32, seed=M)
    x = acts((M, 128), torch.float16, seed=M + 1)
    check(K.quant_linear(x, w, backend="triton"), Q.quant_linear_ref(x, w), torch.float16)


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("kind", ["int4", "int4z", "fp8"])
@pytest.mark.parametrize("M", [1, 16])
def test_activation_dtypes(dtype, kind, M):
    w = weight(kind, 33, 192, 64, seed=3)
    x = acts((M, 192), dtype, seed=4)
    want = Q.quant_linear_ref(x, w)
    for c in Q.config_space(M, dtype == torch.float32)[:1] + [c for c in Q.config_space(M) if c["DOT"]][:1]:
        check(Q.quant_linear_triton(x, w, config=Q.fit_config(c, FMT[kind], 64, 192)), want, dtype)


@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("zeros", [False, True])
@pytest.mark.parametrize("groups_in_k", [1, 3])
def test_groups(group, zeros, groups_in_k):
    K_ = group * groups_in_k
    w = weight("int4z" if zeros else "int4", 19, K_, group, seed=group + groups_in_k, scale_dtype=torch.bfloat16)
    x = acts((5, K_), torch.float16, seed=group)
    want = Q.quant_linear_ref(x, w)
    for c in (Q.config_space(5)[0], Q.config_space(1)[0]):  # MMA and FMA tiles
        cfg = Q.fit_config(c, Q.INT4, group, K_)
        assert cfg["BLOCK_K"] <= group and group % cfg["BLOCK_K"] == 0
        check(Q.quant_linear_triton(x, w, config=cfg), want, torch.float16)


def test_fp8_k_not_a_multiple_of_the_tile():
    w = weight("fp8", 21, 200, seed=5)  # K = 200: a ragged last K tile (EVEN_K false)
    x = acts((3, 200), torch.float32, seed=6)
    want = Q.quant_linear_ref(x, w)
    for c in (Q.config_space(3, True)[0], Q.config_space(1, True)[0]):
        check(Q.quant_linear_triton(x, w, config=Q.fit_config(c, Q.FP8, 0, 200)), want, torch.float32)


def test_fp8_bit_conversion_covers_every_value():
    """Every finite e4m3 byte (subnormals, both signs) through the kernel's bit move."""
    codes = torch.arange(256, dtype=torch.int32).to(torch.uint8)
    vals = codes.view(torch.float8_e4m3fn)
    finite = torch.isfinite(vals.float())
    N = int(finite.sum())
    w = Fp8Weight(vals[finite].reshape(N, 1).repeat(1, 16), torch.full((N,), 0.5))
    x = torch.zeros(1, 16)
    x[0, 3] = 1.0  # picks column 3 of every row: out[n] = value * scale
    got = Q.quant_linear_triton(x, w, config=Q.fit_config(Q.config_space(1, True)[0], Q.FP8, 0, 16))
    assert torch.equal(got[0], vals[finite].float() * 0.5)


def test_strided_and_batched_inputs():
    w = weight("int4z", 40, 128, 32, seed=7)
    big = acts((6, 256), torch.float16, seed=8)
    cases = [big[:, ::2], big[::2, :128], big[:, 128:].reshape(2, 3, 128), big[0, :128]]
    for x in cases:
        got = K.quant_linear(x, w, backend="triton")
        assert got.shape == (*x.shape[:-1], 40)
        check(got, Q.quant_linear_ref(x, w), torch.float16)


def test_empty_and_odd_groups():
    w = weight("int4", 16, 64, 32)
    assert K.quant_linear(torch.zeros(0, 64), w, backend="triton").shape == (0, 16)
    # a group of 8 leaves no K tile a tl.dot can use: the launcher falls back to dequantize + mm
    W = torch.randn(9, 48, generator=gen(9))
    w8 = quantize_int4(W, 8, scale_dtype=torch.float32)
    assert Q.fit_config(Q.config_space(4)[0], Q.INT4, 8, 48) is None
    x = acts((4, 48), torch.float32)
    check(K.quant_linear(x, w8, backend="triton"), Q.quant_linear_ref(x, w8), torch.float32)


def test_candidates_include_torch_on_cuda_only():
    cands = Q._candidates(8, Q.INT4, 128, 4096, False, cuda=True)
    assert cands[-1] == Q.TORCH and all("TORCH" not in c for c in cands[:-1])
    assert Q.TORCH not in Q._candidates(8, Q.INT4, 128, 4096, False, cuda=False)


def test_torch_candidate_matches(monkeypatch):
    w = weight("int4z", 24, 64, 32)
    x = acts((3, 64), torch.float32)
    check(Q.quant_linear_triton(x, w, config=Q.TORCH), Q.quant_linear_ref(x, w), torch.float32)


@pytest.mark.parametrize("bad, exc, match", [
    (lambda x, w: (x[:, :96], w), ValueError, r"last dim must be the weight's K=128"),
    (lambda x, w: (x.int(), w), TypeError, r"x has dtype torch.int32"),
    (lambda x, w: (x.double(), w), TypeError, r"x has dtype torch.float64"),
    (lambda x, w: (x, Int4Weight(w.packed, w.scales, w.zeros, 48)), ValueError, r"group=48"),
    (lambda x, w: (x, Int4Weight(w.packed, w.scales.int(), w.zeros, 32)), ValueError, r"Int4Weight.scales"),
    (lambda x, w: (x, dequantize(w)), TypeError, r"expected Int4Weight or Fp8Weight"),
])
@pytest.mark.parametrize("backend", ["triton", "cpu", "torch"])
def test_errors_name_the_problem(bad, exc, match, backend):
    x, w = bad(acts((2, 128), torch.float32), weight("int4z", 16, 128, 32))
    with pytest.raises(exc, match=match):
        K.quant_linear(x, w, backend=backend)


def test_pinned_config_must_fit():
    w = weight("int4", 16, 128, 32)
    cfg = dict(Q.config_space(4)[0], BLOCK_K=128)  # crosses groups of 32
    with pytest.raises(ValueError, match="does not fit this weight"):
        Q.quant_linear_triton(acts((4, 128), torch.float32), w, config=cfg)


def test_aot_variants_cover_every_config():
    names = {n for n in Q._qlinear_kernel.arg_names if n not in Q._KERNEL_CONSTEXPRS}
    vs = Q.aot_variants(90)
    tiles = {tuple(sorted((k, v) for k, v in c.items() if k != "SPLIT_K")) for M in (1, 2, 5, 16, 33, 72, 128)
             for c in (Q.fit_config(c, Q.INT4, 128, 4096) for c in Q.config_space(M))}
    compiled = {tuple(sorted(v.config.items())) for v in vs if v.kernel_name.startswith("quant_linear[int4g128")
                and "bf16" in v.kernel_name}
    assert tiles <= compiled
    for v in vs:
        if v.fn is Q._qlinear_kernel:
            assert set(v.signature) == names and set(v.constexprs) == set(Q._KERNEL_CONSTEXPRS)
    assert {v.constexprs["SPLIT_K"] for v in vs if v.fn is Q._splitk_sum_kernel} == set(Q._SPLITS[1:])
    shapes = Q.tune_shapes("cpu")  # `trikern tune` gets labelled thunks (run on a GPU only)
    assert len(shapes) == 24 and all(callable(fn) and "M=" in label for label, fn in shapes)


def test_aot_compiles_without_spills():
    """Two variants per arch here (the whole table is `trikern check-kernels --ops quant_linear`)."""
    rows = aot_rows("quant_linear", '[v for v in vs if "fma,bf16" in v.kernel_name][:1]'
                                    ' + [v for v in vs if "fp8,dot" in v.kernel_name][:1]')
    assert len(rows) == 4
    for arch, name, regs, spill, family, status in rows:
        assert status == "ok" and spill == "0" and 0 < int(regs) <= 255, (arch, name)
        assert family == ("none" if "fma" in name else "wgmma" if arch == "90" else "mma.sync"), (arch, name, family)


# ------------------------------------------------------------------------------------------------
# the CPU path
# ------------------------------------------------------------------------------------------------
def cpu_bound(x, w, dtype):
    """What the CPU products may differ from the reference by: the dense copies round W to bf16
    (half an ulp each, so 2^-9 of sum |x W|), int4mm its scales; then the output's own rounding."""
    W = dequantize(w)
    mag = x.float().abs().reshape(-1, x.shape[-1]) @ W.abs().T
    if dtype == torch.float32:
        return 1e-5 * mag + 1e-6
    return 2 ** -7 * mag + 1e-6


def check_cpu(got, x, w):
    want = Q.quant_linear_ref(x, w)
    assert got.dtype == want.dtype == x.dtype and got.shape == want.shape
    bound = cpu_bound(x, w, x.dtype).reshape(want.shape) + want.float().abs() * TOL[x.dtype]["rtol"]
    err = (got.float() - want.float()).abs()
    assert torch.all(err <= bound), (err - bound).max()


@pytest.fixture
def fresh_choices(monkeypatch):
    monkeypatch.setattr(CQ, "_choices", {})
    monkeypatch.delenv("TRIKERN_CPU_QUANT", raising=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("kind, group, N", [("int4", 32, 48), ("int4z", 64, 32), ("int4", 128, 16),
                                            ("int4z", 64, 37), ("fp8", 0, 48), ("fp8", 0, 37)])
def test_cpu_path_every_product(dtype, kind, group, N, fresh_choices):
    w = weight(kind, N, 256, group or 64, seed=N)
    c = CQ._Copies(w, dtype)
    names = CQ._candidates(w, c)
    assert (CQ.INT4MM in names) == (kind != "fp8" and N % 16 == 0)
    for M in (1, 8, 72):
        x = acts((M, 256), dtype, seed=M)
        for name in names:
            check_cpu(CQ._bind(name, w, c)(x), x, w)
        with torch.no_grad():
            got = K.quant_linear(x, w, backend="cpu")
        check_cpu(got, x, w)
        assert CQ.chosen_path(w, dtype, M) in names
    held = w.__dict__[CQ._KEYS[dtype]]
    assert set(held.made) == set(held.chosen.values())  # copies no choice uses are freed


@pytest.mark.skipif(not cpu_linear.can_pack, reason="oneDNN cannot pack bf16 on this CPU: no packed product")
def test_cpu_packed_product_is_offered():
    w = weight("int4", 16, 64, 32)
    assert CQ.PACKED in CQ._candidates(w, CQ._Copies(w, torch.bfloat16))


def test_cpu_leading_dims_fp16_and_autograd(fresh_choices):
    w = weight("int4z", 32, 128, 32)
    x = acts((2, 3, 128), torch.bfloat16)
    check_cpu(K.quant_linear(x, w), x, w)  # backend "auto" on CPU tensors is the CPU path
    xh = acts((3, 128), torch.float16)
    check_cpu(K.quant_linear(xh, w, backend="cpu"), xh, w)
    xg = acts((3, 128), torch.float32).requires_grad_()
    y = K.quant_linear(xg, w, backend="cpu")
    y.sum().backward()
    torch.testing.assert_close(xg.grad, dequantize(w).sum(0).expand(3, -1), rtol=1e-5, atol=1e-6)
    assert K.quant_linear(torch.zeros(0, 128), w, backend="cpu").shape == (0, 32)


def test_cpu_copies_follow_the_weight(fresh_choices):
    w = weight("int4", 32, 64, 32, scale_dtype=torch.float32)
    x = acts((1, 64), torch.float32)
    with torch.no_grad():
        before = K.quant_linear(x, w, backend="cpu")
        w.scales.mul_(2.0)  # in place: the version counter moves
        check_cpu(K.quant_linear(x, w, backend="cpu"), x, w)
        w.scales = w.scales / 2.0  # replaced
        torch.testing.assert_close(K.quant_linear(x, w, backend="cpu"), before)


def test_cpu_forced_path(monkeypatch, fresh_choices):
    w = weight("int4", 32, 64, 32)
    x = acts((4, 64), torch.float32)
    monkeypatch.setenv("TRIKERN_CPU_QUANT", "int4mm")
    with torch.no_grad():
        check_cpu(K.quant_linear(x, w, backend="cpu"), x, w)
    assert CQ.chosen_path(w, torch.float32, 4) == CQ.INT4MM
    held = w.__dict__[CQ._KEYS[torch.float32]]
    assert set(held.made) == {CQ.INT4MM}  # no dense copy was ever made
    monkeypatch.setenv("TRIKERN_CPU_QUANT", "fast")
    with pytest.raises(ValueError, match="TRIKERN_CPU_QUANT='fast'"):
        K.quant_linear(acts((2, 64), torch.float32), weight("int4", 32, 64, 32, seed=1), backend="cpu")


def test_bench_smoke(tmp_path):
    path = tmp_path / "ql.csv"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_quant_linear.py"), "--smoke", "--csv", str(path),
                          "--threads", "1"], env=env, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    text = path.read_text().splitlines()
    assert len(text) == 1 + 5 * 3 * 3 + 4  # header, CPU rows, interpreter rows
    assert "quant/dense" in out.stdout and "lm_head" in out.stdout
