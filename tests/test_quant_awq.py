"""trikern/quant/awq.py: activation-aware scales lower a linear's int4 output error where a few input
channels carry large activations, and folding them into a model leaves its 16-bit function as it was."""
import pytest
import torch
from test_quant_gptq import correlated_inputs, logits
from util import random_model

from trikern.quant import Spec
from trikern.kernels.qweight import dequantize
from trikern.quant import quantize_weight
from trikern.quant.awq import awq_scale_model, search_scale


@pytest.mark.parametrize("spec", [Spec("int4", 32), Spec("int4", 64, symmetric=False), Spec("int4", 128)])
def test_scales_beat_round_to_nearest_where_activations_have_outliers(spec):
    N, K = 48, 256
    X = correlated_inputs(1024, K)
    W = 0.05 * torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    s, ratio = search_scale(W, X, X.abs().mean(0), spec)
    err = lambda Q, x: ((X @ W.T - x @ Q.T).norm() / (X @ W.T).norm()).item()  # noqa: E731
    rtn_q = lambda M: dequantize(quantize_weight(M, spec))  # noqa: E731
    rtn, awq = err(rtn_q(W), X), err(rtn_q(W * s), X / s)
    assert awq < 0.9 * rtn and ratio == pytest.approx((awq / rtn) ** 2, rel=1e-3), (awq, rtn, ratio)
    assert s[:4].mean() > s[4:].mean()  # the outlier channels are scaled up
    # No outliers, no gain to find: never worse than RTN (a = 0 is among the exponents tried).
    flat = torch.randn(1024, K, generator=torch.Generator().manual_seed(5))
    assert search_scale(W, flat, flat.abs().mean(0), spec)[1] <= 1.0


def test_folded_scales_keep_the_model_function():
    """In fp32 the scaled model's logits equal the original's (the scales only move between a norm
    or the up rows and the weight after them); every scaled linear's weight changed."""
    m = random_model(dtype=torch.float32)
    windows = torch.randint(0, m.cfg.vocab_size, (4, 24), generator=torch.Generator().manual_seed(2))
    ref = logits(m, windows)
    before = {n: p.clone() for n, p in m.named_parameters()}
    ratios = awq_scale_model(m, Spec("int4", 32, symmetric=False), windows, batch=2)
    assert len(ratios) == 3 * m.cfg.num_hidden_layers and all(0 < r <= 1.0 for r in ratios.values()), ratios
    assert torch.allclose(logits(m, windows), ref, rtol=1e-4, atol=1e-4)
    moved = {n for n, p in m.named_parameters() if not torch.equal(p, before[n])}
    changed = {f"layers.{i}.{n}" for i, r in enumerate(m.layers)
               for n in ("self_attn.qkv_proj.weight", "mlp.gate_up_proj.weight", "mlp.down_proj.weight",
                         "input_layernorm.weight", "post_attention_layernorm.weight")}
    assert changed <= moved and not any(".o_proj." in n for n in moved), moved - changed
    with pytest.raises(ValueError, match="int4"):
        awq_scale_model(m, Spec("fp8", 128), windows)
    with pytest.raises(ValueError, match="windows: expected token ids"):
        awq_scale_model(m, Spec("int4", 32), torch.zeros(0, 8, dtype=torch.long))
