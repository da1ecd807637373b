"""RoPE Triton kernel (interpreter) against rope_ref: configs, dtypes, shapes, strides, llama-4 scaling."""
import importlib

import pytest
import torch

from trikern.kernels import rope

R = importlib.import_module("trikern.kernels.rope")

# fp32: same math, FMA contraction only; fp16: one rounding; bf16: the interpreter truncates (1 ulp).
TOL = {
    torch.float32: dict(atol=2e-5, rtol=2e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-5, rtol=2 ** -7),
}


def inv_freq(D, theta=1e6):
    return 1.0 / theta ** (torch.arange(0, D, 2, dtype=torch.float32) / D)


def inputs(T, Hq, Hkv, D, dtype=torch.float32, seed=0, max_pos=40000):
    g = torch.Generator().manual_seed(seed)
    q = torch.randn(T, Hq, D, generator=g).to(dtype)
    k = torch.randn(T, Hkv, D, generator=g).to(dtype)
    pos = torch.randint(0, max_pos, (T,), generator=g)
    return q, k, pos


def check(got, want, dtype):
    for a, b in zip(got, want):
        assert a.dtype == b.dtype and a.shape == b.shape
        torch.testing.assert_close(a.float(), b.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL))
@pytest.mark.parametrize("cfg", R.CONFIGS, ids=lambda c: "-".join(f"{k}{v}" for k, v in c.items()))
def test_every_config(cfg, dtype):
    q, k, pos = inputs(17, 5, 5, 64, dtype)  # 17 tokens / 5 heads: one past BLOCK_T=16 and BLOCK_H=4
    f = inv_freq(64)
    got = R.rope_triton(q, k, pos, f, 1.25, 0.1, 8192, config=cfg)
    check(got, R.rope_ref(q, k, pos, f, 1.25, 0.1, 8192), dtype)


@pytest.mark.parametrize("T", [0, 1, 15, 17])
@pytest.mark.parametrize("D", [64, 128])
@pytest.mark.parametrize("Hq,Hkv", [(5, 5), (8, 2), (16, 2)])  # GQA ratios 1, 4, 8
def test_shapes_through_autotune(T, D, Hq, Hkv):
    q, k, pos = inputs(T, Hq, Hkv, D, seed=T + D)
    f = inv_freq(D)
    got = rope(q, k, pos, f, 1.0, None, 1, backend="triton")
    check(got, R.rope_ref(q, k, pos, f), torch.float32)


def test_llama4_scaling_beyond_original_length():
    L = 8192
    pos = torch.tensor([0, 1, L - 1, L, L + 1, 2 * L - 1, 2 * L, 16385, 100_000, 1 << 20, 3 * L])
    T = pos.shape[0]
    q, k, _ = inputs(T, 8, 1, 128, seed=3)
    f = inv_freq(128)
    got_q, got_k = R.rope_triton(q, k, pos, f, 1.0, 0.1, L, config=R.CONFIGS[0])
    check((got_q, got_k), R.rope_ref(q, k, pos, f, 1.0, 0.1, L), torch.float32)
    plain_q, plain_k = R.rope_triton(q, k, pos, f, 1.0, None, L, config=R.CONFIGS[0])
    torch.testing.assert_close(got_k, plain_k, atol=0, rtol=0)  # keys are never scaled
    ratio = got_q.norm(dim=(1, 2)) / plain_q.norm(dim=(1, 2))
    expect = 1 + 0.1 * torch.log1p(torch.div(pos, L, rounding_mode="floor").float())
    torch.testing.assert_close(ratio, expect, atol=1e-5, rtol=1e-5)
    assert (ratio[pos < L] == 1).all() and (ratio[pos >= L] > 1).all()


def test_strided_views():
    T, Hq, Hkv, D = 9, 4, 2, 64
    g = torch.Generator().manual_seed(1)
    qkv = torch.randn(T, (Hq + 2 * Hkv) * D, generator=g)  # a fused projection output
    q = qkv[:, : Hq * D].view(T, Hq, D)
    k = qkv[:, Hq * D: (Hq + Hkv) * D].view(T, Hkv, D)
    assert not q.is_contiguous() and not k.is_contiguous()
    pos = torch.arange(T) + 16380
    f = inv_freq(D)
    check(R.rope_triton(q, k, pos, f, 1.0, 0.1, 16384, config=R.CONFIGS[2]),
          R.rope_ref(q, k, pos, f, 1.0, 0.1, 16384), torch.float32)
    qt = torch.randn(Hq, T, D, generator=g).transpose(0, 1)  # head-major storage
    ks = torch.randn(T, Hkv, 2 * D, generator=g)[..., ::2]  # non-unit last stride: copied
    check(R.rope_triton(qt, ks, pos, f, config=R.CONFIGS[3]), R.rope_ref(qt, ks, pos, f), torch.float32)


def test_int32_positions_and_attn_factor():
    q, k, pos = inputs(6, 4, 4, 64, seed=5)
    f = inv_freq(64)
    got = R.rope_triton(q, k, pos.to(torch.int32), f, 0.8, config=R.CONFIGS[1])
    check(got, R.rope_ref(q, k, pos, f, 0.8), torch.float32)


@pytest.mark.parametrize("bad, match", [
    (lambda q, k, p, f: (q[0], k, p, f), "q must be"),
    (lambda q, k, p, f: (q, k[:3], p, f), "does not match q"),
    (lambda q, k, p, f: (q, k, p[:3], f), "positions"),
    (lambda q, k, p, f: (q, k, p.float(), f), "positions"),
    (lambda q, k, p, f: (q, k, p, f[:5]), "inv_freq"),
    (lambda q, k, p, f: (q.to(torch.int32), k, p, f), "q has dtype"),
    (lambda q, k, p, f: (q[..., :63], k[..., :63], p, f), "even"),
])
def test_errors_name_the_problem(bad, match):
    q, k, pos = inputs(4, 4, 2, 64)
    with pytest.raises((ValueError, TypeError), match=match):
        R.rope_triton(*bad(q, k, pos, inv_freq(64)))


def test_sincos_within_an_ulp_at_any_angle():
    """The kernel's own cos / sin (no libdevice: its slow path spills) against fp64 torch, for small
    angles, whole positions up to 2^21 (inv_freq[0] = 1) and fp32 angles up to 2^31."""
    import triton
    import triton.language as tl

    @triton.jit
    def sincos_kernel(x_ptr, c_ptr, s_ptr, N, BLOCK: tl.constexpr):
        i = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        m = i < N
        c, s = R._sincos(tl.load(x_ptr + i, mask=m, other=0.0))
        tl.store(c_ptr + i, c, mask=m)
        tl.store(s_ptr + i, s, mask=m)

    g = torch.Generator().manual_seed(0)
    x = torch.cat([torch.rand(4096, generator=g) * 8 - 4, torch.arange(0, 4096).float() * (torch.pi / 4),
                   torch.randint(0, 1 << 21, (4096,), generator=g).float(),
                   torch.randint(0, (1 << 31) - 1, (4096,), generator=g).float()])
    c, s = torch.empty_like(x), torch.empty_like(x)
    sincos_kernel[(triton.cdiv(x.numel(), 1024),)](x, c, s, x.numel(), BLOCK=1024)
    for got, want in ((c, torch.cos(x.double())), (s, torch.sin(x.double()))):
        err = (got.double() - want).abs() / want.abs().clamp_min(2 ** -10)  # relative, absolute near 0
        assert err.max() < 1.5 * torch.finfo(torch.float32).eps
