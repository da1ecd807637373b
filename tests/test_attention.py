"""Triton attention kernel vs the PyTorch reference (`attention_ref`), under the CPU interpreter.

Cache slots at and past cache_len hold NaN, so any read of an uncommitted slot shows up in the
output. The shape sweep is a covering subset (every T, cache length, GQA ratio, head_dim, pattern and
dtype appears; not the full product) to keep interpreter time small; every config of every arch's
config space runs on one shape that exercises cache splits, the cache tail tile and masked chunk
tiles.
"""
from __future__ import annotations

import csv
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from trikern.kernels import attention, autotune
from trikern.kernels.attention import (
    BIDIRECTIONAL, CAUSAL, QUADRATIC, attention_ref, attention_triton, config_space, full_mask,
)

# Per-dtype tolerance: fp32 is exact up to summation order. fp16 must be within 2x the error of
# torch's own fp16 SDPA (plus a floor). bf16 runs through the fp32 upcast path, so only the final
# rounding to bf16 (the interpreter truncates: allow 1 ulp, 2^-7 relative) separates it from fp32.
FP32_TOL = dict(atol=1e-5, rtol=1e-5)
FP16_FLOOR = 1e-3
BF16_TOL = dict(atol=1e-3, rtol=2.0 ** -7)

ARCHS = (80, 90, 121)


def make_case(T, Hq, Hkv, D, n, S=None, dtype=torch.float32, seed=0):
    """Random inputs with NaN in every cache slot >= n; also returns a clean fp32 copy for the reference."""
    S = n + 3 if S is None else S
    g = torch.Generator().manual_seed(seed)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    q, k, v = r(T, Hq, D), r(T, Hkv, D), r(T, Hkv, D)
    kc, vc = r(Hkv, S, D), r(Hkv, S, D)
    clean = tuple(x.to(dtype).float().clone() for x in (q, k, v, kc, vc))
    kc[:, n:], vc[:, n:] = float("nan"), float("nan")
    return tuple(x.to(dtype) for x in (q, k, v, kc, vc)), clean


def reference(clean, n, pattern, sub_block):
    q, k, v, kc, vc = clean
    return attention_ref(q, k, v, kc, vc, n, pattern, sub_block)


def torch_sdpa(q, k, v, kc, vc, pattern, sub_block):
    """torch's own SDPA in q's dtype over the committed cache `kc`/`vc` and the chunk: the fp16
    baseline (attention_ref computes in fp32, so it is not one)."""
    n = kc.shape[1]
    mask = full_mask(pattern, q.shape[0], n, n, sub_block)
    out = F.scaled_dot_product_attention(q.transpose(0, 1), torch.cat([kc, k.transpose(0, 1)], 1),
                                         torch.cat([vc, v.transpose(0, 1)], 1), attn_mask=mask, enable_gqa=True)
    return out.transpose(0, 1)


def assert_close(out, ref, dtype, torch_lowp=None):
    assert out.dtype == dtype and out.shape == ref.shape
    assert not out.isnan().any(), "NaN leaked from an uncommitted cache slot"
    if dtype == torch.float32:
        torch.testing.assert_close(out, ref, **FP32_TOL)
    elif dtype == torch.bfloat16:
        torch.testing.assert_close(out.float(), ref, **BF16_TOL)
    else:
        err = (out.float() - ref).abs().max().item()
        bound = 2 * (torch_lowp.float() - ref).abs().max().item() + FP16_FLOOR
        assert err <= bound, f"fp16 error {err:.2e} > {bound:.2e} (2x torch's fp16 SDPA + floor)"


def run_case(T, G, D, n, pattern, dtype=torch.float32, sub_block=0, Hkv=2, cfg=None, tensor_len=False, seed=0):
    (q, k, v, kc, vc), clean = make_case(T, Hkv * G, Hkv, D, n, dtype=dtype, seed=seed)
    length = torch.tensor(n) if tensor_len else n
    out = attention_triton(q, k, v, kc, vc, length, pattern, sub_block, None, cfg)
    ref = reference(clean, n, pattern, sub_block)
    lowp = None
    if dtype == torch.float16:
        lowp = torch_sdpa(q, k, v, kc[:, :n], vc[:, :n], pattern, sub_block)
    assert_close(out, ref, dtype, lowp)


def _cfg(i: int) -> dict:
    """A different config of the sm_80 space for each sweep case (all are correct for any shape)."""
    space = config_space(80)
    return space[i % len(space)]


# (T, GQA ratio, head_dim, cache_len, pattern, dtype)
SWEEP = [  # the tallest shapes first: they get the prefill tiles (few interpreter programs)
    (33, 8, 64, 1, BIDIRECTIONAL, torch.float32),
    (33, 4, 128, 5, CAUSAL, torch.float16),
    (17, 4, 64, 0, BIDIRECTIONAL, torch.bfloat16),
    (33, 1, 64, 65, CAUSAL, torch.float32),
    (16, 4, 64, 5, CAUSAL, torch.bfloat16),
    (17, 1, 64, 1, CAUSAL, torch.float32),
    (16, 1, 128, 64, BIDIRECTIONAL, torch.float32),
    (7, 4, 64, 65, BIDIRECTIONAL, torch.float32),
    (7, 1, 64, 0, CAUSAL, torch.float16),
    (2, 8, 64, 1, CAUSAL, torch.float32),
    (2, 1, 128, 5, BIDIRECTIONAL, torch.float32),
    (1, 1, 64, 0, CAUSAL, torch.float32),
    (1, 4, 128, 65, CAUSAL, torch.float32),
    (1, 8, 64, 64, BIDIRECTIONAL, torch.float16),
    (0, 1, 64, 5, CAUSAL, torch.float32),
]


@pytest.mark.parametrize("i", range(len(SWEEP)), ids=[
    f"T{t}-G{g}-D{d}-n{n}-{['causal', 'bidir'][m]}-{str(dt)[6:]}" for t, g, d, n, m, dt in SWEEP])
def test_sweep(i):
    T, G, D, n, pattern, dtype = SWEEP[i]
    run_case(T, G, D, n, pattern, dtype, cfg=_cfg(i), tensor_len=bool(i % 2), seed=i)


@pytest.mark.parametrize("B,n,G,dtype,cfg", [(1, 0, 1, torch.float32, 5), (2, 5, 4, torch.float32, 8),
                                             (4, 65, 1, torch.float16, 3), (8, 1, 8, torch.float32, 0)])
def test_quadratic(B, n, G, dtype, cfg):
    T = B * (B + 1)
    run_case(T, G, 64, n, QUADRATIC, dtype, sub_block=B + 1, cfg=_cfg(cfg), tensor_len=True, seed=B)


def _all_configs():
    """Every config of every arch, once per (BLOCK_M, BLOCK_N, SPLIT): the interpreter ignores
    num_warps and num_stages, so configs differing only there run the same program."""
    seen, out = set(), []
    for arch in ARCHS:
        for c in config_space(arch):
            key = (c["BLOCK_M"], c["BLOCK_N"], c["SPLIT"])
            if key not in seen:
                seen.add(key)
                out.append(c)
    return out


def test_every_config():
    """Every shipped config (alternately CAUSAL and QUADRATIC) on a shape with rows > 64 and an
    uneven cache: full and tail cache tiles, empty cache splits, full and masked chunk tiles."""
    (q, k, v, kc, vc), clean = make_case(18, 4, 1, 64, 65, S=80, seed=7)
    refs = {CAUSAL: reference(clean, 65, CAUSAL, 0), QUADRATIC: reference(clean, 65, QUADRATIC, 3)}
    for i, cfg in enumerate(_all_configs()):
        pattern = (CAUSAL, QUADRATIC)[i % 2]
        out = attention_triton(q, k, v, kc, vc, 65, pattern, 3, None, cfg)
        assert not out.isnan().any(), f"config {cfg}: NaN"
        torch.testing.assert_close(out, refs[pattern], **FP32_TOL, msg=lambda m: f"config {cfg}: {m}")


def test_autotuned_launch_matches_reference(monkeypatch):
    """Through autotune.choose: under the interpreter it runs every candidate config of the shape."""
    monkeypatch.delenv("TRIKERN_AUTOTUNE", raising=False)
    autotune.enable()
    autotune.clear_memo()
    (q, k, v, kc, vc), clean = make_case(1, 8, 2, 64, 200, S=600, seed=3)
    out = attention(q, k, v, kc, vc, torch.tensor(200), CAUSAL, backend="triton")
    torch.testing.assert_close(out, reference(clean, 200, CAUSAL, 0), **FP32_TOL)


def test_backend_triton_equals_torch():
    (q, k, v, kc, vc), _ = make_case(9, 4, 2, 64, 6, seed=11)
    kc, vc = torch.nan_to_num(kc), torch.nan_to_num(vc)
    for pattern, sub in ((CAUSAL, 0), (BIDIRECTIONAL, 0), (QUADRATIC, 3)):
        a = attention(q, k, v, kc, vc, 6, pattern, sub, scale=0.3, backend="triton")
        b = attention(q, k, v, kc, vc, 6, pattern, sub, scale=0.3, backend="torch")
        torch.testing.assert_close(a, b, **FP32_TOL)


def test_non_contiguous_inputs():
    """q/k/v as strided views of fused projections, a transposed cache and a non-unit head_dim stride."""
    T, Hq, Hkv, D, n = 5, 4, 2, 64, 9
    g = torch.Generator().manual_seed(5)
    qkv = torch.randn(T, Hq + 2 * Hkv, D, generator=g)
    q, k, v = qkv[:, :Hq], qkv[:, Hq:Hq + Hkv], qkv[:, Hq + Hkv:]
    kc = torch.randn(n + 4, Hkv, D, generator=g).transpose(0, 1)  # [Hkv, S, D] view of [S, Hkv, D]
    vc = torch.randn(Hkv, D, n + 4, generator=g).transpose(1, 2)  # head_dim not the contiguous axis
    assert not (q.is_contiguous() or kc.is_contiguous() or vc.stride(-1) == 1)
    ref = attention_ref(q, k, v, kc, vc, n, CAUSAL)
    out = attention_triton(q, k, v, kc, vc, n, CAUSAL, 0, None, _cfg(6))
    torch.testing.assert_close(out, ref, **FP32_TOL)


def test_head_dim_not_power_of_two():
    run_case(3, 2, 48, 7, CAUSAL, cfg=_cfg(5))


def test_custom_scale():
    (q, k, v, kc, vc), clean = make_case(4, 2, 1, 64, 3, seed=2)
    out = attention_triton(q, k, v, kc, vc, 3, BIDIRECTIONAL, 0, 0.05, _cfg(4))
    torch.testing.assert_close(out, attention_ref(*clean, 3, BIDIRECTIONAL, 0, 0.05), **FP32_TOL)


@pytest.mark.parametrize("change,match", [
    (dict(k_dtype=torch.float16), "k is torch.float16"),
    (dict(n=40), "cache_len=40 outside"),
    (dict(n_tensor=torch.tensor([1, 2])), "cache_len tensor"),
    (dict(pattern=7), "attention pattern=7"),
    (dict(pattern=QUADRATIC, sub=4), "not a multiple of sub_block=4"),
    (dict(dtype=torch.float64), "dtype torch.float64 not supported"),
])
def test_bad_input_errors(change, match):
    dtype = change.get("dtype", torch.float32)
    (q, k, v, kc, vc), _ = make_case(6, 2, 1, 64, 4, S=8, dtype=dtype)
    if "k_dtype" in change:
        k = k.to(change["k_dtype"])
    n = change.get("n_tensor", change.get("n", 4))
    with pytest.raises(ValueError, match=match):
        attention_triton(q, k, v, kc, vc, n, change.get("pattern", CAUSAL), change.get("sub", 0), None, _cfg(0))



@pytest.mark.parametrize("arch", ARCHS)
def test_candidate_configs_follow_the_shape(arch):
    """Decode shapes get short tiles and cache splits; prefill shapes only tall tiles, no split;
    everything offered fits the arch's shared memory by the estimate."""
    from trikern.kernels.attention import _candidates, smem_estimate

    decode = _candidates(arch, rows=4, kv_heads=8, S=32768, D=128, elem_bytes=2)
    assert all(c["BLOCK_M"] == 16 for c in decode) and any(c["SPLIT"] > 1 for c in decode)
    mid = _candidates(arch, rows=128, kv_heads=8, S=32768, D=128, elem_bytes=2)
    assert all(c["BLOCK_M"] >= 64 for c in mid) and any(c["SPLIT"] > 1 for c in mid)
    prefill = _candidates(arch, rows=16384, kv_heads=8, S=32768, D=128, elem_bytes=2)
    assert prefill and all(c["BLOCK_M"] >= 64 and c["SPLIT"] == 1 for c in prefill)
    short_cache = _candidates(arch, rows=4, kv_heads=8, S=64, D=128, elem_bytes=2)
    assert all(c["SPLIT"] == 1 for c in short_cache)
    for c in decode + mid + prefill:
        assert smem_estimate(c, 128, arch) <= autotune.smem_limit(arch)


@pytest.mark.parametrize("arch", ARCHS)
def test_aot_variants_cover_every_config(arch):
    """check-kernels gets every config at head_dim 128 with a complete signature (compiling them is
    `trikern check-kernels`' job, outside the test suite)."""
    from trikern.kernels.attention import _attn_fwd, aot_variants

    variants = aot_variants(arch)
    fwd = [v for v in variants if v.fn is _attn_fwd and not v.constexprs["VARLEN"]]
    causal128 = [v.config for v in fwd if v.constexprs["PATTERN"] == CAUSAL and v.constexprs["HEAD_D"] == 128]
    assert sorted(map(str, causal128)) == sorted(map(str, config_space(arch)))
    for v in variants:
        assert set(v.signature) | set(v.constexprs) == set(v.fn.arg_names), v.kernel_name
        assert not set(v.signature) & set(v.constexprs), v.kernel_name


def test_cacheless_forward():
    """A forward without a cache passes a capacity-0 cache and length 0."""
    (q, k, v, kc, vc), clean = make_case(5, 4, 2, 64, 0, S=0, seed=9)
    assert kc.shape[1] == 0
    for pattern, sub in ((CAUSAL, 0), (QUADRATIC, 5)):
        out = attention(q, k, v, kc, vc, 0, pattern, sub, backend="triton")
        torch.testing.assert_close(out, reference(clean, 0, pattern, sub), **FP32_TOL)


def test_bench_smoke_writes_csv(tmp_path):
    """bench/bench_attention.py --smoke runs every code path on CPU and writes its CSV rows."""
    root = Path(__file__).resolve().parents[1]
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    path = tmp_path / "attention.csv"
    out = subprocess.run([sys.executable, str(root / "benchmarks" / "bench_attention.py"), "--smoke", "--csv", str(path)],
                         env=env, capture_output=True, text=True, cwd=root)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(path.open()))
    assert {(r["pattern"], r["impl"]) for r in rows} == {
        (m, i) for m in ("causal", "quadratic") for i in ("triton", "torch_ref", "sdpa")}
    assert all(r["gpu"] == "cpu-interpreter" and r["triton"] and r["torch"] for r in rows)
    assert all(float(r["max_err"]) < 1e-4 for r in rows if r["impl"] == "triton")


def test_pattern_names_the_mask_argument():
    """The mask kind is `pattern` in kernels and model ("mode" is the decoding mode): keyword
    `pattern=` works, `mode=` is refused, and the package exports no MODES."""
    import inspect

    import trikern.kernels as K
    from trikern.kernels.attention import PATTERNS
    from trikern.model import Transformer

    assert not hasattr(K, "MODES") and PATTERNS == {"causal": CAUSAL, "bidirectional": BIDIRECTIONAL,
                                                     "quadratic": QUADRATIC}
    assert "pattern" in inspect.signature(Transformer.forward).parameters
    _, clean = make_case(4, 2, 1, 64, 3, seed=4)
    want = reference(clean, 3, BIDIRECTIONAL, 0)
    for fn in (attention_ref, attention_triton):
        torch.testing.assert_close(fn(*clean, 3, pattern=BIDIRECTIONAL, sub_block=0), want, **FP32_TOL)
        with pytest.raises(TypeError, match="mode"):
            fn(*clean, 3, mode=CAUSAL)
