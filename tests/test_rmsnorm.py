"""RMSNorm Triton kernel (interpreter) against rmsnorm_ref: configs, dtypes, residual, shapes, strides."""
import importlib

import pytest
import torch

from trikern.kernels import rmsnorm

N_ = importlib.import_module("trikern.kernels.rmsnorm")

# bf16: the interpreter truncates both roundings (before and after the weight multiply): 2 ulp.
TOL = {
    torch.float32: dict(atol=1e-5, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-5, rtol=2 * 2 ** -7),
}
SUM_TOL = {  # x + residual: one rounding of the exact sum
    torch.float32: dict(atol=0, rtol=0),
    torch.float16: dict(atol=0, rtol=0),
    torch.bfloat16: dict(atol=1e-6, rtol=2 ** -7),
}


def inputs(shape, dtype=torch.float32, seed=0, wdtype=None):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g).to(dtype)
    r = torch.randn(shape, generator=g).to(dtype)
    w = (1 + 0.3 * torch.randn(shape[-1], generator=g)).to(wdtype or dtype)
    return x, r, w


def check(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


def check_op(got, x, w, eps, r, dtype):
    """Compare with the reference; with a residual, the sum first, then the norm of the kernel's sum
    (so a 1-ulp difference in the bf16 sum is not counted again in the norm)."""
    if r is None:
        return check(got, N_.rmsnorm_ref(x, w, eps), dtype)
    y, h = got
    want_h = N_.rmsnorm_ref(x, w, eps, r)[1]
    assert h.dtype == want_h.dtype and h.shape == want_h.shape
    torch.testing.assert_close(h.float(), want_h.float(), **SUM_TOL[dtype])
    check(y, N_.rmsnorm_ref(h, w, eps), dtype)


@pytest.mark.parametrize("residual", [False, True])
@pytest.mark.parametrize("dtype", list(TOL))
def test_every_config(dtype, residual):
    H = 100
    x, r, w = inputs((5, H), dtype)  # 5 rows: one past BLOCK_T=4
    configs = N_.configs_for(H)
    assert configs == N_.CONFIGS  # a small row keeps the whole space
    for cfg in configs:
        rr = r if residual else None
        check_op(N_.rmsnorm_triton(x, w, 1e-5, rr, config=cfg), x, w, 1e-5, rr, dtype)


@pytest.mark.parametrize("N", [0, 1, 3, 5])
@pytest.mark.parametrize("H", [1, 17, 64, 1000])
def test_shapes_through_autotune(N, H):
    x, r, w = inputs((N, H), seed=N * H)
    check_op(rmsnorm(x, w, 1e-6, backend="triton"), x, w, 1e-6, None, torch.float32)
    check_op(rmsnorm(x, w, 1e-6, r, backend="triton"), x, w, 1e-6, r, torch.float32)


def test_leading_dims_strides_and_weight_promotion():
    x, r, w = inputs((2, 3, 48), torch.bfloat16, wdtype=torch.float32)
    got = N_.rmsnorm_triton(x, w, 1e-5, r, config=N_.CONFIGS[2])
    assert got[0].dtype == torch.float32  # bf16 activations * fp32 weight promote, as in torch
    check_op(got, x, w, 1e-5, r, torch.bfloat16)
    big = torch.randn(7, 80)
    xs = big[:, 8:56]  # row-strided view
    xt = torch.randn(48, 7).t()  # column-major: copied
    w48 = inputs((1, 48))[2]
    check_op(N_.rmsnorm_triton(xs, w48, 1e-5, xt, config=N_.CONFIGS[1]), xs, w48, 1e-5, xt, torch.float32)


def test_row_fits_rule():
    for H in (64, 5120, 16384, 65536):
        cfgs = N_.configs_for(H)
        assert cfgs and all(set(c) == {"BLOCK_T", "num_warps"} for c in cfgs)
        bh = N_.block_h(H)
        assert all(c["BLOCK_T"] * bh <= 64 * 32 * c["num_warps"] for c in cfgs) or len(cfgs) == 1
    assert len(N_.configs_for(65536)) == 1


@pytest.mark.parametrize("bad, match", [
    (lambda x, w, r: (x, w[:5], 1e-5, r), "weight"),
    (lambda x, w, r: (x, w, 1e-5, r[:2]), "residual"),
    (lambda x, w, r: (x, w, 1e-5, r.half()), "residual"),
    (lambda x, w, r: (x.long(), w, 1e-5, None), "x has dtype"),
    (lambda x, w, r: (x[:, :0], w[:0], 1e-5, None), "hidden"),
])
def test_errors_name_the_problem(bad, match):
    x, r, w = inputs((3, 16))
    with pytest.raises((ValueError, TypeError), match=match):
        N_.rmsnorm_triton(*bad(x, w, r))
