"""The CPU backend (trikern/kernels/cpu/) against the references it implements: the norm (the layer
norm of [x, -x]) and the attention (committed entries only, fp32 batched matmuls); and the routing:
"auto" on CPU tensors runs the CPU backend, "torch" the references. (Its matmul: test_cpu_linear.py.)"""
import pytest
import torch

import trikern.kernels as K
from trikern.kernels.attention import BIDIRECTIONAL, CAUSAL, QUADRATIC, attention_ref, full_mask
from trikern.kernels.cpu import attention as cpu_attention
from trikern.kernels.cpu import norm as cpu_norm
from trikern.kernels.rmsnorm import add_rmsnorm_ref, rmsnorm_ref

FP32_TOL = dict(atol=1e-5, rtol=1e-5)
BF16_TOL = dict(atol=1e-3, rtol=2.0 ** -7)  # one rounding of fp32 results that differ in summation order


def norm_inputs(shape, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(shape, generator=g).to(dtype), (1 + 0.3 * torch.randn(shape[-1], generator=g)).to(dtype)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16, torch.float32])
@pytest.mark.parametrize("H", [1, 7, 256, 4096])
def test_norm_is_the_reference_within_an_ulp_on_rare_elements(H, dtype):
    # The layer norm of [x, -x] against the reference (torch's rms_norm math on the widened row,
    # rounded once), over small, unit, large and offset rows: it may differ only by the fp32
    # summation order of the mirrored mean, at most an ulp of the output dtype, on a rare element.
    ulp = torch.finfo(dtype).eps
    for scale, offset in ((1e-3, 0.0), (1.0, 0.0), (40.0, 0.0), (1.0, 3.0)):
        x, _ = norm_inputs((33, H), dtype, seed=H)
        x = (x.float() * scale + offset * scale).to(dtype)
        ones = torch.ones(H, dtype=dtype)
        exact = rmsnorm_ref(x, ones, 1e-5)
        got = cpu_norm.rmsnorm(x, ones, 1e-5)
        assert got.dtype == dtype
        err = (got.float() - exact.float()).abs()
        assert (err <= ulp * exact.float().abs() + 1e-6).all()
        if dtype != torch.float32:
            assert (err > 0).float().mean() <= 1e-3


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_add_norm_sums_as_the_reference_and_norms_the_sum(dtype):
    x, w = norm_inputs((5, 3, 64), dtype, seed=1)
    r, _ = norm_inputs((5, 3, 64), dtype, seed=2)
    y, h = cpu_norm.add_rmsnorm(x, r, w, 1e-6)
    want_y, want_h = add_rmsnorm_ref(x, r, w, 1e-6)
    assert torch.equal(h, want_h) and y.dtype == want_y.dtype
    torch.testing.assert_close(y.float(), want_y.float(), **(FP32_TOL if dtype == torch.float32 else BF16_TOL))
    assert torch.equal(y, cpu_norm.rmsnorm(h, w, 1e-6))


def attention_case(T, n, dtype=torch.float32, Hq=4, Hkv=2, D=16, extra=9):
    """q, k, v, and a cache of n + extra slots whose slots >= n hold NaN; and clean copies of all five
    (the cache without NaN) for the reference."""
    g = torch.Generator().manual_seed(n + T)
    r = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    q, k, v, kc, vc = r(T, Hq, D), r(T, Hkv, D), r(T, Hkv, D), r(Hkv, n + extra, D), r(Hkv, n + extra, D)
    clean = tuple(t.to(dtype).clone() for t in (q, k, v, kc, vc))
    kc[:, n:], vc[:, n:] = float("nan"), float("nan")
    return tuple(t.to(dtype) for t in (q, k, v, kc, vc)), clean


SHAPES = [(1, CAUSAL, 0), (1, BIDIRECTIONAL, 0), (1, QUADRATIC, 1), (5, CAUSAL, 0), (5, BIDIRECTIONAL, 0),
          (6, QUADRATIC, 3), (6, QUADRATIC, 2)]


@pytest.mark.parametrize("T,pattern,sub_block", SHAPES)
@pytest.mark.parametrize("n", [0, 1, 7])
@pytest.mark.parametrize("how", ["concat", "chunk_in_cache", "query_chunks"])
def test_attention_equals_the_dense_mask_over_every_slot(T, pattern, sub_block, n, how, monkeypatch):
    """The CPU attention attends to the committed entries only (and to no mask where every key is
    visible): the same as softmax under the full [T, S + T] mask over every slot, which is what the
    reference computes. Slots past n (past n + T when the chunk was written there first) hold NaN:
    none may leak. Also with queries split in chunks of 2 (a long prefill)."""
    (q, k, v, kc, vc), clean = attention_case(T, n)
    if how == "chunk_in_cache":
        kc[:, n:n + T], vc[:, n:n + T] = k.transpose(0, 1), v.transpose(0, 1)
    if how == "query_chunks":
        monkeypatch.setattr(cpu_attention, "CPU_SCORES", 2 * 4 * (n + T))  # 2 query rows x 4 heads x keys
    out = cpu_attention.attention(q, k, v, kc, vc, torch.tensor(n), pattern, sub_block,
                                  chunk_in_cache=how == "chunk_in_cache")
    cq, ck, cv, ckc, cvc = clean
    keys = torch.cat([ckc, ck.transpose(0, 1)], 1).repeat_interleave(2, 0)  # [Hq, S + T, D]
    vals = torch.cat([cvc, cv.transpose(0, 1)], 1).repeat_interleave(2, 0)
    scores = (cq.transpose(0, 1) @ keys.transpose(1, 2)) / 4.0  # 1 / sqrt(16)
    scores = scores.masked_fill(~full_mask(pattern, T, n + 9, n, sub_block), float("-inf"))
    dense = (scores.softmax(-1) @ vals).transpose(0, 1)
    torch.testing.assert_close(out, dense, **FP32_TOL)
    torch.testing.assert_close(out, attention_ref(*clean, n, pattern, sub_block), **FP32_TOL)


@pytest.mark.parametrize("T,pattern,sub_block", SHAPES)
@pytest.mark.parametrize("n", [0, 7])
def test_attention_in_bf16_is_the_reference_to_an_ulp(T, pattern, sub_block, n):
    (q, k, v, kc, vc), clean = attention_case(T, n, torch.bfloat16)
    out = cpu_attention.attention(q, k, v, kc, vc, n, pattern, sub_block, scale=0.3)
    ref = attention_ref(*clean, n, pattern, sub_block, scale=0.3)
    assert out.dtype == ref.dtype == torch.bfloat16 and out.shape == ref.shape
    torch.testing.assert_close(out.float(), ref.float(), **BF16_TOL)


def test_chunk_masks_are_kept_per_shape_and_bounded(monkeypatch):
    """A pattern's chunk mask is built once per (pattern, T, sub_block) and reused by later layers and
    steps at any cache length: interleaved shapes and lengths each still give the reference's result
    from the kept mask, shapes never share one, and the store stays bounded."""
    monkeypatch.setattr(cpu_attention, "_BLOCKED", {})
    for T, pattern, sub_block, n in [(6, QUADRATIC, 3, 7), (6, QUADRATIC, 2, 7), (5, CAUSAL, 0, 1),
                                     (6, QUADRATIC, 3, 0), (5, CAUSAL, 0, 7), (6, QUADRATIC, 2, 1)]:
        (q, k, v, kc, vc), clean = attention_case(T, n)
        out = cpu_attention.attention(q, k, v, kc, vc, n, pattern, sub_block)
        torch.testing.assert_close(out, attention_ref(*clean, n, pattern, sub_block), **FP32_TOL)
    cpu = torch.device("cpu")
    assert set(cpu_attention._BLOCKED) == {(QUADRATIC, 6, 3, cpu), (QUADRATIC, 6, 2, cpu), (CAUSAL, 5, 0, cpu)}
    kept = cpu_attention._blocked(CAUSAL, 5, 0, torch.device("cpu"))
    assert kept is cpu_attention._blocked(CAUSAL, 5, 0, torch.device("cpu"))
    assert torch.equal(kept, torch.ones(5, 5, dtype=torch.bool).triu(1))
    with torch.inference_mode():  # a mask first built in inference mode serves autograd later
        cpu_attention.attention(*attention_case(4, 3)[0], 3, CAUSAL)
    (q, k, v, kc, vc), clean = attention_case(4, 3)
    q.requires_grad_(True)
    cpu_attention.attention(q, k, v, kc, vc, 3, CAUSAL).sum().backward()
    assert q.grad is not None and torch.isfinite(q.grad).all()
    monkeypatch.setattr(cpu_attention, "_BLOCKED_KEPT", 2)
    for T in (2, 3, 4):
        cpu_attention._blocked(CAUSAL, T, 0, torch.device("cpu"))
    assert len(cpu_attention._BLOCKED) <= 2
    monkeypatch.setattr(cpu_attention, "_KEPT_ELEMENTS", 30)  # a long chunk's (a prefill's) is not kept
    cpu_attention._BLOCKED.clear()
    (q, k, v, kc, vc), clean = attention_case(6, 2)
    out = cpu_attention.attention(q, k, v, kc, vc, 2, CAUSAL)
    torch.testing.assert_close(out, attention_ref(*clean, 2, CAUSAL), **FP32_TOL)
    assert not cpu_attention._BLOCKED


def test_attention_refuses_what_the_reference_refuses():
    (q, k, v, kc, vc), _ = attention_case(6, 2)
    with pytest.raises(ValueError, match="attention pattern=7"):
        cpu_attention.attention(q, k, v, kc, vc, 2, 7)
    with pytest.raises(ValueError, match="not a multiple of sub_block=4"):
        cpu_attention.attention(q, k, v, kc, vc, 2, QUADRATIC, 4)
    with pytest.raises(ValueError, match="do not match"):
        cpu_attention.attention(q, k[:2], v[:2], kc, vc, 2)
    assert cpu_attention.attention(q[:0], k[:0], v[:0], kc, vc, 2).shape == (0, 4, 16)


def test_routing():
    """"auto" on CPU tensors is the CPU backend, "cpu" too, "torch" the references; a CPU tensor
    under "cpu" only."""
    x, w = norm_inputs((3, 64), torch.bfloat16, seed=5)
    for be in ("auto", "cpu"):
        assert K.resolve(be, x) == "cpu" and not K.use_triton(be, x)
        assert torch.equal(K.rmsnorm(x, w, 1e-5, backend=be), cpu_norm.rmsnorm(x, w, 1e-5))
    assert K.resolve("torch", x) == "torch"
    assert torch.equal(K.rmsnorm(x, w, 1e-5, backend="torch"), rmsnorm_ref(x, w, 1e-5))
    (q, k, v, kc, vc), clean = attention_case(5, 7)
    kc, vc = clean[3], clean[4]
    for be, want in (("auto", cpu_attention.attention), ("cpu", cpu_attention.attention), ("torch", attention_ref)):
        assert torch.equal(K.attention(q, k, v, kc, vc, 7, CAUSAL, backend=be), want(q, k, v, kc, vc, 7, CAUSAL))
    assert K.check_backend("cpu") == "cpu" and "cpu" in K.BACKENDS
    with pytest.raises(ValueError, match="backend='gpu'"):
        K.check_backend("gpu")
    if torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="backend='cpu' needs CPU tensors"):
            K.resolve("cpu", x.cuda())
