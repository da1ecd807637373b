"""The fused linear family (kernels/fused_linear.py) under the interpreter: the weight layouts, the
references against the existing refs composed, every op against its reference over rows / odd
shapes / head dims / GQA / dtypes / FMA and MMA tiles / split-K, the cache write (exactly the given
slots), the unfused (TORCH) path, autotuning, PDL's switches, bad input, and the AOT / tune tables."""
import importlib
from pathlib import Path

import pytest
import torch
from util import aot_rows
import torch.nn.functional as TF

from trikern.cache import KVCache
from trikern.kernels.rmsnorm import rmsnorm_ref
from trikern.kernels.rope import rope_ref
from trikern.kernels.swiglu import swiglu_ref

F = importlib.import_module("trikern.kernels.fused_linear")
ROOT = Path(__file__).resolve().parents[1]

# |got - want| <= atol * max|want| + rtol * |want|. fp32: summation order and the norm's
# reassociation; fp16: one rounding of the normed activations and of each output; bf16: the same,
# and the interpreter truncates bf16 casts (each a one-ulp error of one sign), so a few ulps.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=2e-3, rtol=2e-3),
    torch.bfloat16: dict(atol=2 ** -6, rtol=2 ** -6),
}
DTYPES = list(TOL)
EPS = 1e-5


def cfg(bm, bn, bk, split=1, dot=None):
    return {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "SPLIT_K": split, "DOT": int(bm >= 16 if dot is None else dot),
            "num_warps": 4, "num_stages": 2}


# FMA (one / two rows), MMA tiles (16 and 128 rows), split-K over 4 tiles of 32 (2, 3 and 4 ways:
# 3 leaves one split two tiles), a K tile wider than K=100
CONFIGS = [cfg(1, 32, 128), cfg(2, 32, 32, 2), cfg(16, 64, 64), cfg(16, 32, 32, 4), cfg(16, 64, 32, 3),
           cfg(128, 64, 128), cfg(2, 64, 32, 3, dot=0)]


def for_rows(M):
    """A config of the kind the tuner would pick for M rows (interpreter cost: few programs)."""
    if M <= 2:
        return cfg(M, 32, 128)
    return cfg(min(128, max(16, 1 << (M - 1).bit_length())), 64, 64)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def rnd(*shape, dtype=torch.float32, seed=0, scale=1.0):
    return (torch.randn(*shape, generator=gen(seed)) * scale).to(dtype)


def check(got, want, dtype):
    assert got.dtype == want.dtype == dtype and got.shape == want.shape
    tol = TOL[dtype]
    g, w = got.float(), want.float()
    bound = tol["atol"] * max(w.abs().max().item(), 1e-30) + tol["rtol"] * w.abs()
    err = (g - w).abs()
    assert torch.all(err <= bound), f"max excess {(err - bound).max().item():.3g} (max err {err.max().item():.3g})"


def inv_freq(D, theta=1e4):
    return 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)


class Case:
    """Inputs of all four ops: x [M, K], the norm weight, W [N, K] (even N: gate_up pairs), a residual,
    and a qkv problem (Hq, Hkv, D) with positions, a 3-layer cache and scratch slots."""

    def __init__(self, M, dtype, K=100, N=94, heads=(4, 1, 16), seed=0):
        self.M, self.dtype, self.K = M, dtype, K
        self.x = rnd(M, K, dtype=dtype, seed=seed, scale=2.0)
        self.nw = (1 + rnd(K, seed=seed + 1, scale=0.2)).to(dtype)
        self.W = rnd(N, K, dtype=dtype, seed=seed + 2, scale=K ** -0.5)
        self.res = rnd(M, N, dtype=dtype, seed=seed + 3)
        Hq, Hkv, D = self.heads = heads
        self.Wqkv = rnd((Hq + 2 * Hkv) * D, K, dtype=dtype, seed=seed + 4, scale=K ** -0.5)
        self.pos = torch.randint(0, 200, (M,), generator=gen(seed + 5))
        self.f = inv_freq(D)
        self.cache = KVCache(3, Hkv, D, capacity=M + 11, dtype=dtype, device="cpu", scratch=M + 2)
        self.cache.k.copy_(rnd(*self.cache.k.shape, dtype=dtype, seed=seed + 6))
        self.cache.v.copy_(rnd(*self.cache.v.shape, dtype=dtype, seed=seed + 7))
        self.cache.length.fill_(9)
        self.slots = self.cache.scratch_slots(M)

    def rope_args(self):
        return self.pos, self.f, 1.25, 0.1, 8  # attn_factor, llama-4 beta and length (positions reach 25 L)


# ------------------------------------------------------------------------------------------------
# Layouts and references
# ------------------------------------------------------------------------------------------------
def test_gate_up_layout_round_trip():
    Wg, Wu = rnd(5, 8, seed=1), rnd(5, 8, seed=2)
    W = F.interleave_gate_up(Wg, Wu)
    assert W.shape == (10, 8) and torch.equal(W[0], Wg[0]) and torch.equal(W[1], Wu[0]) and torch.equal(W[9], Wu[4])
    g, u = F.deinterleave_gate_up(W)
    assert torch.equal(g, Wg) and torch.equal(u, Wu)


def test_qkv_layout_pairs_rotated_rows():
    Hq, Hkv, D = 2, 1, 8
    W = torch.arange((Hq + 2 * Hkv) * D, dtype=torch.float32)[:, None].repeat(1, 3)
    Wi = F.interleave_qkv(W, Hq, Hkv, D)
    # head 1 (q): rows 8 .. 15 -> 8, 12, 9, 13, ...; head 2 (k) likewise; head 3 (v) unchanged
    assert Wi[8:16, 0].tolist() == [8, 12, 9, 13, 10, 14, 11, 15]
    assert Wi[16:24, 0].tolist() == [16, 20, 17, 21, 18, 22, 19, 23]
    assert torch.equal(Wi[24:], W[24:])
    assert torch.equal(F.deinterleave_qkv(Wi, Hq, Hkv, D), W)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_references_compose_the_existing_refs(dtype):
    c = Case(5, dtype)
    lin = lambda h, W: TF.linear(h.float(), W.float()).to(h.dtype)  # noqa: E731
    torch.testing.assert_close(F.linear_residual_ref(c.x, c.W, c.res), lin(c.x, c.W) + c.res, rtol=0, atol=0)
    h = rmsnorm_ref(c.x, c.nw, EPS)
    torch.testing.assert_close(F.norm_linear_ref(c.x, c.nw, EPS, c.W), lin(h, c.W), rtol=0, atol=0)
    Wg, Wu = c.W[:47], c.W[47:]
    want = swiglu_ref(lin(h, Wg), lin(h, Wu))
    torch.testing.assert_close(F.norm_gate_up_swiglu_ref(c.x, c.nw, EPS, F.interleave_gate_up(Wg, Wu)), want,
                               rtol=0, atol=0)
    # qkv: the model's path (one projection, rope_ref on q / k views, KVCache.write at scratch slots)
    Hq, Hkv, D = c.heads
    qkv = lin(h, c.Wqkv).view(5, -1, D)
    q, k = rope_ref(qkv[:, :Hq], qkv[:, Hq:Hq + Hkv], *c.rope_args())
    model = KVCache(3, Hkv, D, 16, dtype, "cpu", scratch=7)
    model.k.copy_(c.cache.k)
    model.v.copy_(c.cache.v)
    model.write(1, k, qkv[:, Hq + Hkv:], c.slots)
    got = F.norm_qkv_rope_cache_ref(c.x, c.nw, EPS, F.interleave_qkv(c.Wqkv, Hq, Hkv, D), *c.rope_args(),
                                    *c.cache.layer(1), c.slots)
    for a, b in zip(got, (q, k, qkv[:, Hq + Hkv:])):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert torch.equal(c.cache.k, model.k) and torch.equal(c.cache.v, model.v)


# ------------------------------------------------------------------------------------------------
# The kernels against the references
# ------------------------------------------------------------------------------------------------
def run_all(c: Case, config, heads_W=None, **kw):
    """(got, want) pairs of every op (the qkv op's cache compared whole)."""
    pairs = [(F.linear_residual_triton(c.x, c.W, c.res, config=config, **kw), F.linear_residual_ref(c.x, c.W, c.res)),
             (F.norm_linear_triton(c.x, c.nw, EPS, c.W, config=config, **kw), F.norm_linear_ref(c.x, c.nw, EPS, c.W)),
             (F.norm_gate_up_swiglu_triton(c.x, c.nw, EPS, c.W, config=config, **kw),
              F.norm_gate_up_swiglu_ref(c.x, c.nw, EPS, c.W))]
    want_cache = KVCache(3, c.heads[1], c.heads[2], 1, c.dtype, "cpu", scratch=c.cache.slots - 1)
    want_cache.k.copy_(c.cache.k)
    want_cache.v.copy_(c.cache.v)
    got = F.norm_qkv_rope_cache_triton(c.x, c.nw, EPS, c.Wqkv, *c.rope_args(), *c.cache.layer(2), c.slots,
                                       config=config, **kw)
    want = F.norm_qkv_rope_cache_ref(c.x, c.nw, EPS, c.Wqkv, *c.rope_args(), *want_cache.layer(2), c.slots)
    pairs += list(zip(got, want))
    return pairs, want_cache


def check_cache(c: Case, want_cache):
    """The written slots match the reference; every other entry of every layer is untouched (bitwise)."""
    written = torch.zeros(c.cache.slots, dtype=torch.bool)
    written[c.slots] = True
    for got, want in ((c.cache.k, want_cache.k), (c.cache.v, want_cache.v)):
        assert torch.equal(got[:, :, ~written], want[:, :, ~written])
        assert torch.equal(got[:2], want[:2])
        check(got[2][:, written], want[2][:, written], c.dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("M", [1, 2, 7, 8, 9, 16, 72, 73])
def test_rows(M, dtype):
    c = Case(M, dtype, seed=M)
    pairs, want_cache = run_all(c, for_rows(M))
    for got, want in pairs:
        check(got, want, dtype)
    check_cache(c, want_cache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: "{BLOCK_M}x{BLOCK_N}x{BLOCK_K}-split{SPLIT_K}-dot{DOT}".format(**c))
def test_every_config(config, dtype):
    c = Case(5, dtype, seed=3)
    pairs, want_cache = run_all(c, config)
    for got, want in pairs:
        check(got, want, dtype)
    check_cache(c, want_cache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("heads", [(4, 1, 16), (2, 2, 32), (8, 2, 32)], ids=["gqa4-d16", "gqa1-d32", "gqa4-d32"])
@pytest.mark.parametrize("K", [72, 100])
def test_qkv_heads(heads, K, dtype):
    c = Case(3, dtype, K=K, heads=heads, seed=K)
    config = cfg(16, 32, 32, 2)  # tiles narrower than some heads and split K
    pairs, want_cache = run_all(c, config)
    for got, want in pairs[3:]:
        check(got, want, dtype)
    check_cache(c, want_cache)


def test_odd_n_and_strided_inputs():
    """linear_residual takes any N (97); x and the residual as column-strided views are copied."""
    x = rnd(9, 2 * 72, seed=1)[:, ::2]
    W = rnd(97, 72, seed=2, scale=0.1)
    res = rnd(97, 9, seed=3).T
    got = F.linear_residual_triton(x, W, res, config=cfg(16, 64, 32, 2))
    check(got, F.linear_residual_ref(x, W, res), torch.float32)


def test_split_k_is_deterministic():
    c = Case(9, torch.float32)
    a = F.norm_gate_up_swiglu_triton(c.x, c.nw, EPS, c.W, config=cfg(16, 32, 32, 4))
    b = F.norm_gate_up_swiglu_triton(c.x, c.nw, EPS, c.W, config=cfg(16, 32, 32, 4))
    assert torch.equal(a, b)


def test_qkv_without_cache_and_outputs_are_views():
    c = Case(4, torch.float32)
    Hq, Hkv, D = c.heads
    q, k, v = F.norm_qkv_rope_cache_triton(c.x, c.nw, EPS, c.Wqkv, c.pos, c.f, kv_heads=Hkv, head_dim=D,
                                           config=for_rows(4))
    want = F.norm_qkv_rope_cache_ref(c.x, c.nw, EPS, c.Wqkv, c.pos, c.f, kv_heads=Hkv, head_dim=D)
    for g, w in zip((q, k, v), want):
        check(g, w, torch.float32)
    assert q.shape == (4, Hq, D) and k.shape == v.shape == (4, Hkv, D)
    assert q.data_ptr() + Hq * D * 4 == k.data_ptr() and q.stride(0) == (Hq + 2 * Hkv) * D


def test_qkv_cache_slots_outside_the_cache_are_skipped():
    c = Case(3, torch.float32)
    before_k, before_v = c.cache.k.clone(), c.cache.v.clone()
    slots = torch.tensor([c.cache.slots, -1, 5])  # two out of range
    q, k, v = F.norm_qkv_rope_cache_triton(c.x, c.nw, EPS, c.Wqkv, c.pos, c.f, 1.0, None, 1, *c.cache.layer(0),
                                           slots, config=for_rows(3))
    changed = (c.cache.k != before_k).any(-1) | (c.cache.v != before_v).any(-1)
    assert changed.nonzero()[:, 2].unique().tolist() == [5] and changed.nonzero()[:, 0].unique().tolist() == [0]
    assert torch.equal(c.cache.k[0, :, 5], k[2]) and torch.equal(c.cache.v[0, :, 5], v[2])


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_unfused_torch_path(dtype):
    """The TORCH candidate (rmsnorm kernel, torch matmul, the epilogue kernel / torch's add)."""
    c = Case(7, dtype, seed=5)
    pairs, want_cache = run_all(c, F.TORCH)
    for got, want in pairs:
        check(got, want, dtype)
    check_cache(c, want_cache)


def test_autotuned_launch():
    """config=None: the interpreter runs each candidate (one FMA, one MMA at one row) and keeps one."""
    c = Case(1, torch.float32, seed=7)
    assert len(F._candidates(1, c.K, True, False)) == 2
    assert F.TORCH in F._candidates(1, c.K, True, True)
    pairs, want_cache = run_all(c, None)
    for got, want in pairs:
        check(got, want, torch.float32)
    check_cache(c, want_cache)


def test_pdl_off_on_cpu_and_same_bits():
    assert isinstance(F.pdl_api(), bool)
    assert not F.use_pdl("cpu", True) and not F.use_pdl("cpu", None)
    c = Case(2, torch.float32)
    a = F.norm_linear_triton(c.x, c.nw, EPS, c.W, config=for_rows(2), pdl=True)
    b = F.norm_linear_triton(c.x, c.nw, EPS, c.W, config=for_rows(2), pdl=False)
    assert torch.equal(a, b)


# ------------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------------
def _bad_calls():
    c = Case(3, torch.float32)
    Hq, Hkv, D = c.heads
    kc, vc = c.cache.layer(0)
    qkv = dict(kv_heads=Hkv, head_dim=D)

    def qkv_call(**over):
        a = dict(x=c.x, norm_w=c.nw, eps=EPS, W_qkv=c.Wqkv, positions=c.pos, inv_freq=c.f, k_cache_layer=kc,
                 v_cache_layer=vc, slots=c.slots)
        a.update(over)
        return lambda f: f(**a)

    lr = F.linear_residual_triton, F.linear_residual_ref
    nl = F.norm_linear_triton, F.norm_linear_ref
    gu = F.norm_gate_up_swiglu_triton, F.norm_gate_up_swiglu_ref
    qk = F.norm_qkv_rope_cache_triton, F.norm_qkv_rope_cache_ref
    return [
        (lr, lambda f: f(c.x[0], c.W, c.res), r"x must be a 2-D \[M, K\] tensor"),
        (lr, lambda f: f(c.x.double(), c.W, c.res), r"x has dtype torch.float64"),
        (lr, lambda f: f(c.x[:, :0], c.W[:, :0], c.res), r"no columns \(K=0\)"),
        (lr, lambda f: f(c.x, c.W[:, :50], c.res), r"W \(94, 50\) must be \[N, K=100\]"),
        (lr, lambda f: f(c.x, c.W.half(), c.res), r"W \(torch.float16, cpu\) must have x's dtype"),
        (lr, lambda f: f(c.x, c.W, c.res[:, :5]), r"residual must be \[M=3, N=94\]"),
        (lr, lambda f: f(c.x, c.W, c.res.half()), r"residual must be .*float16"),
        (nl, lambda f: f(c.x, c.nw[:7], EPS, c.W), r"norm_w must be \[K=100\]"),
        (nl, lambda f: f(c.x, c.nw.half(), EPS, c.W), r"norm_w must be .*float16"),
        (gu, lambda f: f(c.x, c.nw, EPS, c.W[:93]), r"93 rows; the interleaved pairs need an even count"),
        (qk, qkv_call(slots=None), r"k_cache_layer, v_cache_layer and slots come together"),
        (qk, qkv_call(slots=c.slots[:2]), r"slots must be \[M=3\] int64"),
        (qk, qkv_call(slots=c.slots.float()), r"slots must be \[M=3\] int64"),
        (qk, qkv_call(positions=c.pos[:1]), r"positions must be \[M=3\] int64"),
        (qk, qkv_call(inv_freq=c.f[:3]), r"inv_freq must be \[head_dim / 2 = 8\]"),
        (qk, qkv_call(k_cache_layer=None, v_cache_layer=None, slots=None), r"without a cache, pass kv_heads= and head_dim="),
        (qk, qkv_call(head_dim=32), r"head_dim=32 but the cache layer has 16"),
        (qk, qkv_call(v_cache_layer=vc[:, :4]), r"v_cache_layer \(1, 4, 16\) must match k_cache_layer"),
        (qk, qkv_call(k_cache_layer=kc.half()), r"k_cache_layer must be a \[Hkv, S, D\] tensor"),
        (qk, qkv_call(W_qkv=c.Wqkv[:-8]), r"W_qkv has 88 rows: not \(Hq \+ 2 Hkv\) \* D"),
        (qk, qkv_call(W_qkv=c.Wqkv[:32], k_cache_layer=None, v_cache_layer=None, slots=None, **qkv),
         r"W_qkv has 32 rows"),
    ]


@pytest.mark.parametrize("i", range(21))
@pytest.mark.parametrize("impl", ["triton", "ref"])
def test_bad_input_names_the_tensor(i, impl):
    fns, call, match = _bad_calls()[i]
    with pytest.raises(ValueError, match=match):
        call(fns[0] if impl == "triton" else fns[1])


def test_bad_config_and_launch_only_checks():
    c = Case(3, torch.float32)
    with pytest.raises(ValueError, match=r"splits K=100 into more parts than its 1 tiles of 128"):
        F.norm_linear_triton(c.x, c.nw, EPS, c.W, config=cfg(16, 64, 128, 2))
    with pytest.raises(ValueError, match=r"lacks num_stages"):
        F.norm_linear_triton(c.x, c.nw, EPS, c.W, config={k: v for k, v in cfg(16, 64, 64).items() if k != "num_stages"})
    with pytest.raises(ValueError, match=r"a DOT tile needs every block >= 16"):
        F.norm_linear_triton(c.x, c.nw, EPS, c.W, config=cfg(2, 64, 64, dot=1))
    with pytest.raises(ValueError, match=r"W must be contiguous along K"):
        F.norm_linear_triton(c.x, c.nw, EPS, rnd(100, 94).T, config=cfg(16, 64, 64))
    with pytest.raises(ValueError, match=r"llama4_len=0 must be a positive integer"):
        F.norm_qkv_rope_cache_triton(c.x, c.nw, EPS, c.Wqkv, c.pos, c.f, 1.0, 0.1, 0, *c.cache.layer(0), c.slots)


# ------------------------------------------------------------------------------------------------
# check-kernels and tune
# ------------------------------------------------------------------------------------------------
def test_aot_variants_cover_every_config():
    main_args = {n for n in F._fused_linear_kernel.arg_names if n not in F._MAIN_CONSTEXPRS}
    epi_args = {n for n in F._splitk_epilogue_kernel.arg_names if n not in F._EPI_CONSTEXPRS}
    for arch in (80, 90, 121):
        vs = F.aot_variants(arch)
        for v in vs:
            if v.fn is F._fused_linear_kernel:
                assert set(v.signature) == main_args and set(v.constexprs) == set(F._MAIN_CONSTEXPRS), v.kernel_name
            else:
                assert set(v.signature) == epi_args and set(v.constexprs) == set(F._EPI_CONSTEXPRS), v.kernel_name
            assert v.constexprs["PDL"] == (arch >= 90 and F.pdl_api() and "unfused" not in v.kernel_name)
        for op, _, _ in F._OPS + (("partial", 0, 0), ("partial+norm", 0, 0)):
            compiled = {tuple(sorted(v.config.items())) for v in vs
                        if v.kernel_name.startswith(f"fused_linear[{op},") and "bf16" in v.kernel_name}
            tiles = {tuple(sorted((k, x) for k, x in c.items() if k != "SPLIT_K"))
                     for M in (1, 2, 5, 16, 33, 72, 128) for c in F.config_space(M)}
            assert tiles <= compiled, op
        epilogues = {v.kernel_name.split("[")[1].split(",")[0] for v in vs if v.fn is F._splitk_epilogue_kernel}
        assert epilogues == {op for op, _, _ in F._OPS}
    shapes = F.tune_shapes("cpu")  # `trikern tune` gets labelled thunks (run on a GPU only)
    assert len(shapes) == 16 and all(callable(fn) and " M=" in label for label, fn in shapes)


def test_aot_compiles_without_spills():
    """The widest qkv tile and its epilogue kernel per arch (the whole table: `trikern check-kernels --ops
    fused_linear`)."""
    rows = aot_rows("fused_linear", '[v for v in vs if "rope_cache,dot,bf16" in v.kernel_name][-1:]'
                                    ' + [v for v in vs if "epilogue[norm_qkv" in v.kernel_name][:1]')
    assert len(rows) == 4
    for arch, name, regs, spill, family, status in rows:
        assert status == "ok" and spill == "0" and 0 < int(regs) <= 255, (arch, name)
    assert rows[0][4] == "mma.sync" and rows[2][4] == "wgmma"
