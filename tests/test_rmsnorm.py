"""RMSNorm Triton kernels (interpreter) against the references: rmsnorm and add_rmsnorm, configs, dtypes,
shapes, strides, one return shape per function; the reference itself against torch's rms_norm. (The
CPU backend's norm: tests/test_cpu_backend.py.)"""
import importlib

import pytest
import torch

from trikern.kernels import add_rmsnorm, rmsnorm

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
    """Compare with the reference: rmsnorm's tensor, or add_rmsnorm's (y, h): the sum first, then
    the norm of the kernel's sum (so a 1-ulp difference in the bf16 sum is not counted again)."""
    if r is None:
        assert torch.is_tensor(got)
        return check(got, N_.rmsnorm_ref(x, w, eps), dtype)
    assert isinstance(got, tuple) and len(got) == 2
    y, h = got
    want_h = N_.add_rmsnorm_ref(x, r, w, eps)[1]
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
        if residual:
            check_op(N_.add_rmsnorm_triton(x, r, w, 1e-5, config=cfg), x, w, 1e-5, r, dtype)
        else:
            check_op(N_.rmsnorm_triton(x, w, 1e-5, config=cfg), x, w, 1e-5, None, dtype)


@pytest.mark.parametrize("N", [0, 1, 3, 5])
@pytest.mark.parametrize("H", [1, 17, 64, 1000])
def test_shapes_through_autotune(N, H):
    x, r, w = inputs((N, H), seed=N * H)
    check_op(rmsnorm(x, w, 1e-6, backend="triton"), x, w, 1e-6, None, torch.float32)
    check_op(add_rmsnorm(x, r, w, 1e-6, backend="triton"), x, w, 1e-6, r, torch.float32)


def test_leading_dims_strides_and_weight_promotion():
    x, r, w = inputs((2, 3, 48), torch.bfloat16, wdtype=torch.float32)
    got = N_.add_rmsnorm_triton(x, r, w, 1e-5, config=N_.CONFIGS[2])
    assert got[0].dtype == torch.float32  # bf16 activations * fp32 weight promote, as in torch
    check_op(got, x, w, 1e-5, r, torch.bfloat16)
    big = torch.randn(7, 80)
    xs = big[:, 8:56]  # row-strided view
    xt = torch.randn(48, 7).t()  # column-major: copied
    w48 = inputs((1, 48))[2]
    check_op(N_.add_rmsnorm_triton(xs, xt, w48, 1e-5, config=N_.CONFIGS[1]), xs, w48, 1e-5, xt, torch.float32)


def test_row_fits_rule():
    for H in (64, 5120, 16384, 65536):
        cfgs = N_.configs_for(H)
        assert cfgs and all(set(c) == {"BLOCK_T", "num_warps"} for c in cfgs)
        bh = N_.block_h(H)
        assert all(c["BLOCK_T"] * bh <= 64 * 32 * c["num_warps"] for c in cfgs) or len(cfgs) == 1
    assert len(N_.configs_for(65536)) == 1


@pytest.mark.parametrize("bad, match", [
    (lambda x, w, r: (x, r, w[:5], 1e-5), "add_rmsnorm: weight"),
    (lambda x, w, r: (x, r[:2], w, 1e-5), "add_rmsnorm: residual"),
    (lambda x, w, r: (x, r.half(), w, 1e-5), "add_rmsnorm: residual"),
    (lambda x, w, r: (x, None, w, 1e-5), "add_rmsnorm: residual is None"),
    (lambda x, w, r: (x.long(), r.long(), w, 1e-5), "add_rmsnorm: x has dtype"),
])
def test_add_errors_name_the_problem(bad, match):
    x, r, w = inputs((3, 16))
    with pytest.raises((ValueError, TypeError), match=match):
        N_.add_rmsnorm_triton(*bad(x, w, r))


@pytest.mark.parametrize("bad, match", [
    (lambda x, w: (x, w[:5], 1e-5), "rmsnorm: weight"),
    (lambda x, w: (x.long(), w, 1e-5), "rmsnorm: x has dtype"),
    (lambda x, w: (x[:, :0], w[:0], 1e-5), "rmsnorm: x .*non-empty last"),
])
def test_errors_name_the_problem(bad, match):
    x, _, w = inputs((3, 16))
    with pytest.raises((ValueError, TypeError), match=match):
        N_.rmsnorm_triton(*bad(x, w))


def test_one_return_shape_per_function():
    """rmsnorm is always a tensor, add_rmsnorm always (y, h), on every backend and for empty input."""
    for shape in ((3, 16), (0, 16)):
        x, r, w = inputs(shape)
        for be in ("triton", "cpu", "torch"):
            assert torch.is_tensor(rmsnorm(x, w, 1e-5, backend=be))
            y, h = add_rmsnorm(x, r, w, 1e-5, backend=be)
            assert y.shape == h.shape == x.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("H", [7, 256, 4096])
def test_reference_norms_half_inputs_in_fp32_with_one_rounding(H, dtype):
    # rmsnorm_ref widens a bf16 / fp16 row to fp32 and rounds the normed row once: the same bits as
    # torch's rms_norm on the widened row, over small, unit and large magnitudes.
    for scale in (1e-3, 1.0, 40.0):
        x, _, w = inputs((33, H), dtype, seed=H)
        x = (x.float() * scale).to(dtype)
        widened = torch.nn.functional.rms_norm(x.float(), (H,), eps=1e-5).to(dtype) * w
        assert torch.equal(N_.rmsnorm_ref(x, w, 1e-5), widened)
