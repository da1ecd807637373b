"""trikern/quant/calibrate.py: GPTQ lowers a linear's output error on its calibration inputs below
round-to-nearest's, in the same int4 layouts (symmetric and with zero points), and quantizes a
whole model in place from one calibration pass."""
import pytest
import torch
from util import random_model

from trikern.kernels.qweight import check_weight, dequantize
from trikern.model import QuantLinear
from trikern.quant import Spec, quantize_weight
from trikern.quant.calibrate import gptq_quantize_model, gptq_weight
from trikern.train.distill import BatchedCausal


def correlated_inputs(n, K, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, K, generator=g) @ (torch.randn(K, K, generator=g) / K**0.5) + 0.3 * torch.randn(n, K, generator=g)
    X[:, :4] *= 10  # a few outlier channels, as real activations have
    return X


@pytest.mark.parametrize("spec", [Spec("int4", 32), Spec("int4", 64, symmetric=False), Spec("int4", 128)])
def test_gptq_beats_round_to_nearest_on_the_calibration_inputs(spec):
    N, K = 48, 256
    X = correlated_inputs(1024, K)
    W = 0.05 * torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    w = gptq_weight(W, X.T @ X / X.shape[0], spec, torch.float32)
    assert check_weight(w) == (N, K) and w.group == spec.group and (w.zeros is None) == spec.symmetric
    err = lambda Q: ((X @ (Q - W).T).norm() / (X @ W.T).norm()).item()  # noqa: E731
    rtn, gptq = err(dequantize(quantize_weight(W, spec))), err(dequantize(w))
    assert gptq < 0.8 * rtn, (gptq, rtn)


def logits(m, windows):
    with torch.inference_mode():
        return m.logits(BatchedCausal(m, windows.shape[0]).hidden(windows)).float()


@pytest.mark.parametrize("sequential,act_order", [(False, False), (True, False), (False, True)])
def test_gptq_quantizes_a_model_in_place(sequential, act_order):
    m = random_model(dtype=torch.float32)
    windows = torch.randint(0, m.cfg.vocab_size, (4, 24), generator=torch.Generator().manual_seed(2))
    ref = logits(m, windows)
    gptq_quantize_model(m, Spec("int4", 32), windows, batch=2, sequential=sequential, act_order=act_order)
    assert sum(isinstance(x, QuantLinear) for x in m.modules()) == 4 * m.cfg.num_hidden_layers
    assert all(x.group == 32 and (x.perm is not None) == act_order for x in m.modules() if isinstance(x, QuantLinear))
    got = logits(m, windows)
    assert 0 < (got - ref).norm() / ref.norm() < 0.5  # quantized (not equal), still the same model
    with pytest.raises(ValueError, match="windows: expected token ids"):
        gptq_quantize_model(random_model(), Spec("int4", 32), torch.zeros(0, 8, dtype=torch.long))


@pytest.mark.parametrize("symmetric", [True, False])
def test_clip_search_lowers_the_weight_error_in_the_standard_layout(symmetric):
    """calibrate.rtn_int4 with the range search: per group never worse than plain round to nearest
    (1.0 is among the fractions tried), lower overall on heavy-tailed weights; off, it is
    quantize_int4 itself; the result is an ordinary Int4Weight (integer zero points)."""
    from trikern.quant.calibrate import gptq_weight, rtn_int4  # noqa: PLC0415

    torch.manual_seed(3)
    W = torch.distributions.StudentT(3.0).sample((64, 256)) * 0.02  # outliers, as trained weights have
    spec = Spec("int4", 32, symmetric)
    plain, clip = quantize_weight(W, spec), rtn_int4(W, spec, torch.float32)
    off = rtn_int4(W, spec, torch.float32, clip_search=False)
    assert torch.equal(off.packed, plain.packed) and torch.equal(off.scales, plain.scales)
    assert check_weight(clip) == (64, 256) and (clip.zeros is None) == symmetric
    e = lambda w: (dequantize(w) - W).square().reshape(64, 8, 32).sum(-1)  # noqa: E731 - per group
    assert (e(clip) <= e(plain) * (1 + 1e-6)).all()
    assert e(clip).sum() < 0.97 * e(plain).sum(), (e(clip).sum(), e(plain).sum())
    X = correlated_inputs(1024, 256)
    H = X.T @ X / X.shape[0]
    assert not torch.equal(gptq_weight(W, H, spec, torch.float32, clip_search=True).scales,
                           gptq_weight(W, H, spec, torch.float32).scales)  # GPTQ takes the option too


def test_range_search_moves_zero_points_where_that_fits_better():
    """With zero points the search also tries each range's rounded zero point one step either way
    (which of the 16 grid points s * (q - z) the group gets): per group never worse than the ranges
    alone, and better for some groups of skewed weights."""
    from trikern.quant.calibrate import CLIP_FRACTIONS, group_params  # noqa: PLC0415

    torch.manual_seed(6)
    Wg = torch.distributions.Exponential(50.0).sample((64, 8, 32)) - 0.01  # skewed: a long upper tail

    def error(s, z):
        q = (torch.round(Wg / s[..., None]) + z[..., None]).clamp(0, 15)
        return ((q - z[..., None]) * s[..., None] - Wg).square().sum(-1)

    lo, hi = Wg.amin(-1).clamp(max=0), Wg.amax(-1).clamp(min=0)
    ranges_only = torch.stack([error(s, torch.round(-f * lo / s).clamp(0, 15))
                               for f in CLIP_FRACTIONS for s in [(f * (hi - lo) / 15).clamp_min(1e-10)]]).amin(0)
    got = error(*group_params(Wg, False, torch.float32, clip_search=True))
    assert (got <= ranges_only * (1 + 1e-6)).all()
    better = (got < 0.99 * ranges_only).float().mean()
    assert better > 0.05 and got.sum() < 0.995 * ranges_only.sum(), (better, got.sum(), ranges_only.sum())
