"""trikern/quant/sizes.py: the weight bytes computed on the meta device equal those of a model
really loaded with `quantize=` (NLD untied head, Llama tied), the in-place quantization the
synthetic bench uses gives the same layouts, and the NLD-8B figures follow from its shape."""
import pytest
import torch
from synth import write_llama_checkpoint, write_nld_checkpoint
from util import random_model

from trikern.configs import load_config
from trikern.loading import load_model
from trikern.quant import Spec
from trikern.quant.checkpoint import quantize_model
from trikern.quant.sizes import sizes


def model_bytes(m) -> int:
    ts = [t for n, t in [*m.named_parameters(), *m.named_buffers()] if n != "inv_freq"]
    return sum(t.numel() * t.element_size() for t in ts)


@pytest.mark.parametrize("kind,spec", [("nld", Spec("int4", 32)), ("nld", Spec("fp8")),
                                       ("llama", Spec("int4", 64)), ("llama", None)])
def test_sizes_equal_a_quantized_load(tmp_path, kind, spec):
    folder = write_nld_checkpoint(tmp_path) if kind == "nld" else write_llama_checkpoint(tmp_path, tied=True)
    m = load_model(folder, device="cpu", dtype="bf16", lora=False, quantize=spec and spec.weights,
                   group_size=spec.group if spec else 128)
    s = sizes(m.cfg, spec)
    assert s["total"] == model_bytes(m)
    assert s["total"] == s["linears"] + s["embedding"] + s["head"] + s["other"]
    assert (s["head"] == 0) == m.cfg.tie_word_embeddings
    if spec is not None:
        assert s["linears"] < sizes(m.cfg, None)["linears"] / (1.8 if spec.weights == "fp8" else 3.5)
        assert s["load_peak"] > s["total"]


@pytest.mark.parametrize("spec", [Spec("int4", 32), Spec("int4", 64, symmetric=False), Spec("fp8")])
def test_quantize_model_in_place_matches_the_computed_bytes(spec):
    m = random_model(dtype=torch.bfloat16)
    x = torch.randn(3, m.cfg.hidden_size, dtype=torch.bfloat16)
    ref = m.layers[0].mlp.gate_up_proj(x).float()
    quantize_model(m, spec)
    assert model_bytes(m) == sizes(m.cfg, spec)["total"]
    got = m.layers[0].mlp.gate_up_proj(x).float()
    assert (got - ref).norm() / ref.norm() < (0.2 if spec.weights == "int4" else 0.05)  # still the same linear


def test_nld_8b_figures_follow_from_its_shape():
    cfg = load_config("nld-8b")
    H, I, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    q, kv = cfg.num_attention_heads * cfg.head_dim, cfg.num_key_value_heads * cfg.head_dim
    linears = [(q, H), (kv, H), (kv, H), (H, q), (I, H), (I, H), (H, I)]
    int4 = sizes(cfg, Spec("int4", 128))
    assert int4["linears"] == L * sum(N * K // 2 + N * K // 128 * 2 for N, K in linears)
    assert int4["embedding"] == int4["head"] == 2 * V * H and int4["largest_source"] == 2 * I * H
    assert int4["read_per_token"] == int4["total"] - 2 * V * H + 2 * H
    fp8 = sizes(cfg, Spec("fp8"))
    assert fp8["linears"] == L * sum(N * K + 4 * N for N, K in linears)
    assert sizes(cfg, None)["total"] == 2 * (2 * V * H + L * (sum(N * K for N, K in linears) + 2 * H) + H)
