"""Loading quantized checkpoints (`trikern.load` / `load_model` with a quantization_config: GPTQ and
compressed-tensors, NLD and Llama prefixes, sharded or not) and `quantize=` on a 16-bit checkpoint;
every problem is one CheckpointError naming file and tensor. Then the model on quantized weights:
every mode runs, and self-speculation equals AR token for token (greedy, fp32) on the embedded model
quantized int4 and fp8."""
import json
from pathlib import Path

import pytest
import torch
from decode_helpers import prompts, run
from synth import checkpoint_tensors, llama_config_dict, write_json, write_lora, write_weights
from util import nld_config_dict, random_model

import trikern
from trikern.config import ModelConfig
from trikern.kernels.qweight import dequantize
from trikern.loading import CheckpointError, load_model
from trikern.model import QuantLinear
from trikern.quant import Spec, compressed, gptq, quantize_weight

DEFAULT = Path(trikern.__file__).parent / "assets" / "default"
FUSED = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
         "self_attn.o_proj": ("self_attn.o_proj",), "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
         "mlp.down_proj": ("mlp.down_proj",)}


def write_quantized(folder, d: dict, method: str, spec: Spec, shards=1, skip=(), seed=0, desc_act=False):
    """A tiny checkpoint whose layer linears are quantized in `method`'s tensors (linears in `skip`
    stay bf16 and are listed in the config as unquantized). Returns {linear: its QuantWeight, perm}."""
    folder = Path(folder)
    cfg = ModelConfig.from_dict(d)
    tensors = checkpoint_tensors(random_model(cfg, seed=seed), torch.bfloat16)
    truth = {}
    for name in [n for n in tensors if ".layers." in n and n.endswith("_proj.weight")]:
        module = name.removesuffix(".weight")
        if module in skip:
            continue
        W = tensors.pop(name)
        w = quantize_weight(W, spec)
        perm = None
        if desc_act:  # a made-up act order, the same for every linear reading the same input
            perm = torch.randperm(W.shape[1], generator=torch.Generator().manual_seed(W.shape[1]))
        truth[module] = (w, perm)
        tensors.update(gptq.write_linear(module, w, perm) if method == "gptq" else compressed.write_linear(module, w))
    if method == "gptq":
        q = gptq.config(spec.group, spec.symmetric, desc_act=desc_act,
                        dynamic={f"-:^{m.replace('.', '[.]')}$": {} for m in skip} or None)
    else:
        ignore = [] if cfg.tie_word_embeddings else [cfg.head_name.removesuffix(".weight")]
        q = compressed.config({spec.group: ["Linear"]}, spec.weights, spec.symmetric, ignore + list(skip))
    write_json(folder / "config.json", {**d, "quantization_config": q})
    write_weights(folder, tensors, shards)
    return truth


def check_weights(model, truth, cfg):
    """Every fused module holds the stack of its pieces' weights (compared as matrices)."""
    for i in range(cfg.num_hidden_layers):
        for fused, pieces in FUSED.items():
            names = [f"{cfg.prefix}.layers.{i}.{p}" for p in pieces]
            mod = model.get_submodule(f"layers.{i}.{fused}")
            if names[0] not in truth:
                assert not isinstance(mod, QuantLinear)
                continue
            assert isinstance(mod, QuantLinear)
            want = torch.cat([dequantize(truth[n][0]) for n in names])
            assert torch.equal(dequantize(mod.qweight), want), names


@pytest.mark.parametrize("method", ["gptq", "compressed-tensors"])
@pytest.mark.parametrize("family,shards", [("nld", 1), ("nld", 3), ("llama", 2)])
def test_loads_quantized_checkpoints(tmp_path, method, family, shards):
    d = nld_config_dict() if family == "nld" else llama_config_dict()
    spec = Spec("int4", 32, symmetric=method == "gptq")
    truth = write_quantized(tmp_path, d, method, spec, shards)
    m = load_model(tmp_path, device="cpu", dtype="fp32", backend="torch")
    check_weights(m, truth, m.cfg)
    # The forward equals the same model with the dequantized weights as plain fp32 weights.
    ref = load_model(tmp_path, device="cpu", dtype="fp32", backend="torch")
    for name, mod in list(ref.named_modules()):
        if isinstance(mod, QuantLinear):
            lin = torch.nn.Linear(mod.in_features, mod.out_features, bias=False)
            lin.weight.data = dequantize(mod.qweight)
            ref.set_submodule(name, lin)
    toks = torch.arange(7) % m.cfg.vocab_size
    with torch.no_grad():
        assert torch.allclose(m(toks, torch.arange(7)), ref(toks, torch.arange(7)), atol=1e-4, rtol=1e-4)


def test_gptq_act_order_and_fp8_compressed_tensors(tmp_path):
    d = nld_config_dict()
    truth = write_quantized(tmp_path / "g", d, "gptq", Spec("int4", 32, False), desc_act=True)
    m = load_model(tmp_path / "g", device="cpu", dtype="fp32")
    qkv = m.layers[0].self_attn.qkv_proj
    assert qkv.perm is not None
    x = torch.randn(3, qkv.in_features)
    W = torch.cat([dequantize(truth[f"encoder.layers.0.{p}"][0])[:, torch.argsort(truth[f"encoder.layers.0.{p}"][1])]
                   for p in FUSED["self_attn.qkv_proj"]])
    assert torch.allclose(qkv(x), x @ W.T, atol=1e-4)
    truth = write_quantized(tmp_path / "f", d, "compressed-tensors", Spec("fp8"))
    m = load_model(tmp_path / "f", device="cpu", dtype="bf16")
    check_weights(m, truth, m.cfg)
    assert m.layers[0].mlp.down_proj.weight.dtype == torch.float8_e4m3fn
    assert m.embed_tokens.weight.dtype == torch.bfloat16 and m.lm_head.weight.dtype == torch.bfloat16


@pytest.mark.parametrize("method", ["gptq", "compressed-tensors"])
def test_ignored_linears_stay_16_bit(tmp_path, method):
    d = nld_config_dict()
    skip = ("encoder.layers.1.mlp.gate_proj", "encoder.layers.1.mlp.up_proj", "encoder.layers.0.self_attn.o_proj")
    truth = write_quantized(tmp_path, d, method, Spec("int4", 32), skip=skip)
    m = load_model(tmp_path, device="cpu", dtype="fp32")
    check_weights(m, truth, m.cfg)
    assert type(m.layers[1].mlp.gate_up_proj).__name__ == "Linear"


def test_half_ignored_fused_weight_is_refused(tmp_path):
    write_quantized(tmp_path, nld_config_dict(), "compressed-tensors", Spec("int4", 32),
                    skip=("encoder.layers.0.self_attn.k_proj",))
    with pytest.raises(CheckpointError, match=r"config.json: quantization_config quantizes "
                       r"'encoder.layers.0.self_attn.q_proj' but not 'encoder.layers.0.self_attn.k_proj'"):
        load_model(tmp_path, device="cpu")


def _edit(folder, fn):
    from safetensors.torch import load_file, save_file

    f = Path(folder) / "model.safetensors"
    t = load_file(f)
    fn(t)
    save_file(t, f)
    return f


@pytest.mark.parametrize("method,edit,match", [
    ("gptq", lambda t: t.pop("encoder.layers.1.mlp.down_proj.scales"),
     r"model.safetensors: missing tensor\(s\) 'encoder.layers.1.mlp.down_proj.scales'"),
    ("gptq", lambda t: t.update({"encoder.layers.0.mlp.up_proj.qweight": torch.zeros(8, 96, dtype=torch.int64)}),
     r"model.safetensors: tensor 'encoder.layers.0.mlp.up_proj.qweight' is int64; expected int32"),
    ("gptq", lambda t: t.update({"encoder.layers.0.self_attn.k_proj.scales":
                                 t["encoder.layers.0.self_attn.k_proj.scales"].to(torch.int32)}),
     r"model.safetensors: tensor 'encoder.layers.0.self_attn.k_proj.scales' is int32"),
    ("compressed-tensors", lambda t: t.update({"encoder.layers.0.mlp.down_proj.weight_packed": torch.zeros(
        64, 4, dtype=torch.int32)}), r"model.safetensors: tensor 'encoder.layers.0.mlp.down_proj.weight_packed' has "
                                     r"shape \[64, 4\]; expected \[64, 12\]"),
    ("compressed-tensors", lambda t: t.update({"encoder.layers.0.self_attn.q_proj.extra": torch.zeros(1)}),
     r"model.safetensors: unexpected tensor\(s\) 'encoder.layers.0.self_attn.q_proj.extra'"),
])
def test_bad_quantized_tensor_is_one_error_naming_file_and_tensor(tmp_path, method, edit, match):
    write_quantized(tmp_path, nld_config_dict(), method, Spec("int4", 32))
    _edit(tmp_path, edit)
    with pytest.raises(CheckpointError, match=match):
        load_model(tmp_path, device="cpu")


def test_mis_packed_shape_error_is_specific(tmp_path):
    """A qweight packed along the wrong dimension ([K, N/8] instead of [K/8, N])."""
    write_quantized(tmp_path, nld_config_dict(), "gptq", Spec("int4", 32))
    name = "encoder.layers.0.mlp.up_proj.qweight"
    _edit(tmp_path, lambda t: t.update({name: torch.zeros(64, 12, dtype=torch.int32)}))
    with pytest.raises(CheckpointError, match=rf"model.safetensors: tensor '{name}' has shape \[64, 12\]; expected "
                       r"\[8, 96\] \(K/8=8 x N=96\)"):
        load_model(tmp_path, device="cpu")


def test_unknown_method_and_quantize_on_quantized_are_refused(tmp_path):
    d = nld_config_dict()
    write_quantized(tmp_path / "a", d, "gptq", Spec("int4", 32))
    with pytest.raises(CheckpointError, match="already quantized"):
        load_model(tmp_path / "a", device="cpu", quantize="int4")
    (tmp_path / "b").mkdir()
    write_json(tmp_path / "b" / "config.json", {**d, "quantization_config": {"quant_method": "awq", "bits": 4}})
    with pytest.raises(CheckpointError, match=r"config.json: quantization_config.quant_method='awq' is not supported"):
        load_model(tmp_path / "b", device="cpu")


def test_autogptq_quantize_config_json_beside_config(tmp_path):
    d = nld_config_dict()
    write_quantized(tmp_path, d, "gptq", Spec("int4", 32))
    q = json.loads((tmp_path / "config.json").read_text()).pop("quantization_config")
    write_json(tmp_path / "config.json", d)
    write_json(tmp_path / "quantize_config.json", {k: v for k, v in q.items() if k != "quant_method"})
    assert isinstance(load_model(tmp_path, device="cpu").layers[0].mlp.down_proj, QuantLinear)


# -- quantize= on load ----------------------------------------------------------------------------------
@pytest.mark.parametrize("quantize,group", [("int4", 32), ("int4", 64), ("fp8", 128)])
def test_quantize_while_loading(tmp_path, quantize, group):
    d = nld_config_dict()
    write_json(tmp_path / "config.json", d)
    model = random_model(ModelConfig.from_dict(d))
    tensors = checkpoint_tensors(model, torch.bfloat16)
    write_weights(tmp_path, tensors, shards=2)
    m = load_model(tmp_path, device="cpu", dtype="fp32", quantize=quantize, group_size=group)
    for i in range(d["num_hidden_layers"]):
        for fused, pieces in FUSED.items():
            mod = m.get_submodule(f"layers.{i}.{fused}")
            want = torch.cat([dequantize(quantize_weight(tensors[f"encoder.layers.{i}.{p}.weight"],
                                                         Spec(quantize, group))) for p in pieces])
            assert isinstance(mod, QuantLinear) and torch.allclose(dequantize(mod.qweight), want, rtol=0, atol=1e-6)
    assert m.layers[0].mlp.down_proj.group in (None, 32)  # K = 96: group 64 does not divide, 32 does


def test_quantize_argument_errors(tmp_path):
    with pytest.raises(ValueError, match="quantize='int3'"):
        load_model(DEFAULT, device="cpu", quantize="int3")
    with pytest.raises(ValueError, match="group_size=12"):
        load_model(DEFAULT, device="cpu", quantize="int4", group_size=12)


def test_api_load_with_quantize_and_draft_lora(tmp_path):
    d = nld_config_dict()
    write_json(tmp_path / "config.json", d)
    model = random_model(ModelConfig.from_dict(d))
    write_weights(tmp_path, checkpoint_tensors(model, torch.bfloat16))
    write_lora(tmp_path / "linear_spec_lora", model.cfg)
    m = trikern.load(str(tmp_path), device="cpu", dtype="fp32", quantize="int4", group_size=32)
    at = m.model.layers[0].self_attn
    assert isinstance(at.o_proj, QuantLinear) and at.lora is not None
    ar, _, _ = run(m.model, [1, 2, 3], "ar", max_new_tokens=12)
    out, _, _ = run(m.model, [1, 2, 3], "spec-linear", max_new_tokens=12, block_size=4, draft_lora=True)
    assert out == ar


# -- every mode on the embedded model quantized, lossless where it should be -----------------------------
@pytest.fixture(scope="module", params=["int4", "fp8"])
def quantized_default(request):
    return load_model(DEFAULT, device="cpu", dtype="fp32", quantize=request.param)


@pytest.mark.parametrize("mode,B", [("spec-linear", 4), ("spec-linear", 8), ("spec-quadratic", 4),
                                    ("spec-quadratic", 8), ("auto", 8)])
def test_self_speculation_lossless_on_quantized_weights(quantized_default, mode, B):
    m = quantized_default
    for prompt in prompts(2, m.cfg.vocab_size, seed=B, lengths=(5, 12)):
        ar, _, _ = run(m, prompt, "ar", max_new_tokens=20)
        out, stats, _ = run(m, prompt, mode, max_new_tokens=20, block_size=B)
        assert out == ar, (mode, B, prompt)
        assert stats.generated_tokens == 20


def test_diffusion_runs_on_quantized_weights(quantized_default):
    out, stats, _ = run(quantized_default, [5, 6, 7], "diffusion", max_new_tokens=16, block_size=8)
    assert len(out) == 16 and all(0 <= t < quantized_default.cfg.vocab_size for t in out)


def test_quantized_head_is_refused(tmp_path):
    write_quantized(tmp_path, nld_config_dict(), "compressed-tensors", Spec("int4", 32))
    d = json.loads((tmp_path / "config.json").read_text())
    d["quantization_config"]["ignore"] = []
    write_json(tmp_path / "config.json", d)
    with pytest.raises(CheckpointError, match="quantizes the head 'diffusion_head'; trikern keeps the head"):
        load_model(tmp_path, device="cpu")


def test_quant_linear_keeps_one_weight_object_until_its_buffers_change():
    """Kernels keep per-weight state on the QuantWeight (the CPU backend's laid-out copies): the
    layer hands out the same object each call, and a new one once `.to()` replaced a buffer."""
    m = load_model(DEFAULT, device="cpu", dtype="bf16", quantize="int4")
    layer = m.layers[0].mlp.down_proj
    w = layer.qweight
    assert layer.qweight is w and layer.qweight.packed is layer.packed
    layer.to(torch.float32)  # the scales become new fp32 tensors
    assert layer.qweight is not w and layer.qweight.scales.dtype == torch.float32
