"""SwiGLU Triton kernel (interpreter) against swiglu_ref: configs, dtypes, shapes, strided views."""
import importlib

import pytest
import torch

from trikern.kernels import swiglu

S = importlib.import_module("trikern.kernels.swiglu")

TOL = {
    torch.float32: dict(atol=1e-6, rtol=1e-5),
    torch.float16: dict(atol=1e-3, rtol=1e-3),
    torch.bfloat16: dict(atol=1e-5, rtol=2 ** -7),  # interpreter truncates: 1 ulp
}


def inputs(shape, dtype=torch.float32, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (3 * torch.randn(shape, generator=g)).to(dtype), torch.randn(shape, generator=g).to(dtype)


def check(got, want, dtype):
    assert got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got.float(), want.float(), **TOL[dtype])


@pytest.mark.parametrize("dtype", list(TOL))
def test_every_config(dtype):
    g, u = inputs((5, 2049), dtype)  # one past BLOCK_R=4 and BLOCK_C=2048
    for cfg in S.CONFIGS:
        check(S.swiglu_triton(g, u, config=cfg), S.swiglu_ref(g, u), dtype)


@pytest.mark.parametrize("shape", [(0, 96), (1, 1), (1, 1023), (3, 1025), (2, 3, 96), (7,)])
def test_shapes_through_autotune(shape):
    g, u = inputs(shape, seed=len(shape))
    check(swiglu(g, u, backend="triton"), S.swiglu_ref(g, u), torch.float32)


@pytest.mark.filterwarnings("ignore:overflow encountered in exp")  # numpy in the interpreter; exp(1e4) = inf is intended
def test_extremes():
    g = torch.tensor([[-1e4, -100.0, -1.0, 0.0, 1.0, 100.0, 1e4]])
    u = torch.ones_like(g)
    got = S.swiglu_triton(g, u, config=S.CONFIGS[0])
    assert torch.isfinite(got).all()
    check(got, S.swiglu_ref(g, u), torch.float32)


def test_views_of_fused_projection():
    gu = torch.randn(6, 2 * 300)
    g, u = gu[:, :300], gu[:, 300:]  # row-strided halves
    ut = torch.randn(300, 6).t()  # column-major: copied
    check(S.swiglu_triton(g, u, config=S.CONFIGS[2]), S.swiglu_ref(g, u), torch.float32)
    check(S.swiglu_triton(g, ut, config=S.CONFIGS[3]), S.swiglu_ref(g, ut), torch.float32)


@pytest.mark.parametrize("bad, match", [
    (lambda g, u: (g, u[:2]), "same shape"),
    (lambda g, u: (g, u.double()), "same shape"),
    (lambda g, u: (g.long(), u.long()), "gate has dtype"),
])
def test_errors_name_the_problem(bad, match):
    with pytest.raises((ValueError, TypeError), match=match):
        S.swiglu_triton(*bad(*inputs((3, 8))))
