"""Quantized checkpoint formats (trikern/quant): GPTQ and compressed-tensors tensors <-> trikern's
Int4Weight / Fp8Weight. Writer -> reader round trips, the zero-point and packing conventions as
numbers, ragged and act-order groups, bad tensors, configs; and the compressed-tensors facts against
the real package (its compressor writes, trikern reads; trikern writes, its decompressor reads)."""
import math

import pytest
import torch

from trikern.kernels.qweight import Fp8Weight, Int4Weight, dequantize, pack_int4, quantize_int4, unpack_int4
from trikern.quant import FormatError, Spec, compressed, gptq, quantize_weight
from trikern.quant.common import group_for, int4_from_groups, stack


class Src:
    """Tensors by name, as the loader's reader hands them to a format's read_linear."""

    def __init__(self, tensors, file="ckpt/model.safetensors"):
        self.t, self.file = tensors, file

    def has(self, name):
        return name in self.t

    def where(self, name):
        return self.file

    def get(self, name):
        if name not in self.t:
            raise FormatError(f"{self.file}: missing tensor '{name}'")
        return self.t[name]


def rand_w(N, K, seed=0):
    return torch.randn(N, K, generator=torch.Generator().manual_seed(seed))


def same(a, b):
    """Two Int4Weights hold the same numbers in the same layout."""
    assert a.group == b.group and torch.equal(a.packed, b.packed)
    assert torch.equal(a.scales.float(), b.scales.float())
    assert (a.zeros is None) == (b.zeros is None) and (a.zeros is None or torch.equal(a.zeros, b.zeros))


def effective(w, perm):
    """The matrix a (weight, input permutation) pair multiplies the unpermuted input by."""
    W = dequantize(w)
    if perm is None:
        return W
    out = torch.empty_like(W)
    out[:, perm] = W
    return out


# -- GPTQ --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("v1", [True, False])
@pytest.mark.parametrize("N", [24, 40, 20])  # 20: N not a multiple of 8 (qzeros padded)
def test_gptq_round_trip(group, sym, v1, N):
    K = 256
    w = quantize_int4(rand_w(N, K, N), group, sym, scale_dtype=torch.float32)
    t = gptq.write_linear("m", w, v1=v1)
    assert t["m.qweight"].shape == (K // 8, N) and t["m.qzeros"].shape == (K // group, math.ceil(N / 8))
    assert t["m.scales"].shape == (K // group, N) and t["m.g_idx"].tolist() == [k // group for k in range(K)]
    r, perm = gptq.read_linear(Src(t), "m", N, K, gptq.GptqConfig(group=group, sym=sym, v1=v1), torch.float32)
    assert perm is None
    same(r, w)


def test_gptq_packing_and_v1_zero_convention_as_numbers():
    """qweight packs 8 input columns per word, low nibble first; v1 stores zero - 1, so the
    symmetric zero point 8 reads 0x77777777 (GPTQModel / AutoGPTQ), v2 0x88888888."""
    N, K = 8, 32
    q = torch.arange(N * K).reshape(N, K) % 16
    w = Int4Weight(pack_int4(q.to(torch.uint8)), torch.ones(N, 1), None, 32)
    t = gptq.write_linear("m", w, v1=True)
    word = int(t["m.qweight"][0, 3]) & 0xFFFFFFFF  # columns 0..7 of output 3
    assert [(word >> (4 * j)) & 0xF for j in range(8)] == q[3, :8].tolist()
    assert int(t["m.qzeros"][0, 0]) == 0x77777777
    assert int(gptq.write_linear("m", w, v1=False)["m.qzeros"][0, 0]) & 0xFFFFFFFF == 0x88888888
    # a hand-made asymmetric v1 word: zero points 1..8 stored as 0..7
    t["m.qzeros"] = torch.tensor([[0x76543210]], dtype=torch.int32)
    r, _ = gptq.read_linear(Src(t), "m", N, K, gptq.GptqConfig(group=32, sym=False), torch.float32)
    assert r.zeros[:, 0].tolist() == [1, 2, 3, 4, 5, 6, 7, 8]
    W = dequantize(r)
    assert torch.equal(W[5], (q[5] - 6).float())


def test_gptq_v1_asymmetric_zero_point_zero_survives():
    """GPTQModel's v2 -> v1 subtracts 0x11111111 from whole words (a zero point of 0 borrows from
    its neighbour); reading adds it back the same way, so every zero point comes back."""
    N, K = 16, 64
    w = quantize_int4(rand_w(N, K).abs() + 0.1, 32, symmetric=False, scale_dtype=torch.float32)  # min 0 -> zero 0
    assert int(w.zeros.min()) == 0
    r, _ = gptq.read_linear(Src(gptq.write_linear("m", w, v1=True)), "m", N, K, gptq.GptqConfig(group=32, sym=False),
                            torch.float32)
    same(r, w)


def test_gptq_act_order_is_permuted_and_exact():
    N, K, g = 16, 128, 32
    perm = torch.randperm(K, generator=torch.Generator().manual_seed(3))
    w = quantize_int4(rand_w(N, K), g, False, scale_dtype=torch.float32)  # columns in group order
    t = gptq.write_linear("m", w, perm=perm)
    assert sorted(t["m.g_idx"].tolist()) == [k // g for k in range(K)] and t["m.g_idx"].tolist() != sorted(t["m.g_idx"].tolist())
    r, rperm = gptq.read_linear(Src(t), "m", N, K, gptq.GptqConfig(group=g, sym=False, desc_act=True), torch.float32)
    assert rperm is not None and r.group == g
    assert torch.equal(effective(r, rperm), effective(w, perm))
    x = torch.randn(3, K)
    assert torch.allclose(x[:, rperm] @ dequantize(r).T, x @ effective(w, perm).T, atol=1e-4)


def test_gptq_ragged_last_group_becomes_finer_groups():
    """K = 704 with group 128 (GPTQ allows it: 6 groups, the last one 64 wide) reads as group 64
    with each scale repeated: the same matrix."""
    N, K, g = 8, 704, 128
    G = math.ceil(K / g)
    gen = torch.Generator().manual_seed(1)
    q = torch.randint(0, 16, (N, K), generator=gen, dtype=torch.uint8)
    scales = torch.rand(G, N, generator=gen) + 0.5
    zeros = torch.randint(1, 16, (G, N), generator=gen)  # v1 words built nibble by nibble: no zero point 0
    t = {"m.qweight": pack_int4(q).T.contiguous(), "m.scales": scales.half(),
         "m.qzeros": pack_int4((zeros - 1).to(torch.uint8)),
         "m.g_idx": (torch.arange(K) // g).to(torch.int32)}
    r, perm = gptq.read_linear(Src(t), "m", N, K, gptq.GptqConfig(group=g, sym=False), torch.float32)
    assert perm is None and r.group == 64
    gi = torch.arange(K) // g
    ref = scales.half().float().T[:, gi] * (q.float() - zeros.T[:, gi].float())
    assert torch.equal(dequantize(r), ref)


@pytest.mark.parametrize("tensor,value,match", [
    ("m.qweight", torch.zeros(4, 16, dtype=torch.int32), r"tensor 'm\.qweight' has shape \[4, 16\]; expected \[8, 16\]"),
    ("m.scales", torch.zeros(2, 16, dtype=torch.int32), r"tensor 'm\.scales' is int32; expected float16"),
    ("m.qzeros", torch.zeros(2, 2, dtype=torch.float16), r"tensor 'm\.qzeros' is float16; expected int32"),
    ("m.g_idx", torch.full((64,), 5, dtype=torch.int32), r"tensor 'm\.g_idx'.*group indices must lie in \[0, 2\)"),
])
def test_gptq_bad_tensor_names_file_and_tensor(tensor, value, match):
    w = quantize_int4(rand_w(16, 64), 32, scale_dtype=torch.float32)
    t = gptq.write_linear("m", w)
    t[tensor] = value
    with pytest.raises(FormatError, match=r"^ckpt/model\.safetensors: .*" + match):
        gptq.read_linear(Src(t), "m", 16, 64, gptq.GptqConfig(group=32), torch.float32)


def test_gptq_fused_pieces_regroup_and_mix_zero_kinds():
    a = quantize_int4(rand_w(8, 64, 1), 64, True)
    b = quantize_int4(rand_w(16, 64, 2), 32, False)
    s = stack([a, b])
    assert s.group == 32 and s.zeros is not None
    assert torch.equal(dequantize(s), torch.cat([dequantize(a), dequantize(b)]))


def test_gptq_config_parsing():
    c = gptq.parse_config({"quant_method": "gptq", "bits": 4, "group_size": 128, "sym": True, "desc_act": False,
                           "dynamic": {"-:.*layers\\.1\\..*": {}, "+:.*down_proj": {"group_size": 64}}}, "config.json")
    assert c.v1 and c.module("model.layers.0.self_attn.q_proj").group == 128
    assert c.module("model.layers.0.mlp.down_proj").group == 64
    assert c.module("model.layers.1.mlp.up_proj") is None
    assert not gptq.parse_config({"checkpoint_format": "gptq_v2"}, "c").v1
    for bad, match in [({"bits": 8}, "bits=8"), ({"lm_head": True}, "quantized head"),
                       ({"checkpoint_format": "marlin"}, "checkpoint_format='marlin'"),
                       ({"group_size": 0}, "group_size=0"), ({"dynamic": {"+:(": {}}}, "bad regex")]:
        with pytest.raises(FormatError, match=f"^config.json: .*{match}"):
            gptq.parse_config(bad, "config.json")


# -- compressed-tensors ------------------------------------------------------------------------------
@pytest.mark.parametrize("group", [32, 64, 128])
@pytest.mark.parametrize("sym", [True, False])
@pytest.mark.parametrize("N", [24, 20])
def test_ct_int4_round_trip(group, sym, N):
    K = 256
    w = quantize_int4(rand_w(N, K, N), group, sym, scale_dtype=torch.bfloat16)
    t = compressed.write_linear("m", w)
    assert set(t) == {"m.weight_packed", "m.weight_scale", "m.weight_shape"} | (set() if sym else {"m.weight_zero_point"})
    assert t["m.weight_shape"].tolist() == [N, K]
    if not sym:  # zero points packed along N (dim 0)
        assert t["m.weight_zero_point"].shape == (math.ceil(N / 8), K // group)
    scheme = compressed.Scheme("int4", group, sym, "group")
    r, perm = compressed.read_linear(Src(t), "m", N, K, scheme, torch.bfloat16)
    assert perm is None
    same(r, w)


def test_ct_fp8_round_trip():
    w = quantize_weight(rand_w(24, 40), Spec("fp8"))
    t = compressed.write_linear("m", w)
    assert t["m.weight"].dtype == torch.float8_e4m3fn and t["m.weight_scale"].shape == (24, 1)
    r, _ = compressed.read_linear(Src(t), "m", 24, 40, compressed.Scheme("fp8", None, True, "channel"), torch.bfloat16)
    assert torch.equal(r.weight.view(torch.uint8), w.weight.view(torch.uint8)) and torch.equal(r.scale, w.scale)
    t["m.weight_scale"] = torch.tensor([0.5])  # strategy "tensor": one scale
    r, _ = compressed.read_linear(Src(t), "m", 24, 40, compressed.Scheme("fp8", None, True, "tensor"), torch.bfloat16)
    assert torch.equal(r.scale, torch.full((24,), 0.5))


@pytest.mark.parametrize("tensor,value,match", [
    ("m.weight_packed", torch.zeros(16, 4, dtype=torch.int32), r"'m\.weight_packed' has shape \[16, 4\]; expected \[16, 8\]"),
    ("m.weight_packed", torch.zeros(16, 8, dtype=torch.int64), r"'m\.weight_packed' is int64; expected int32"),
    ("m.weight_scale", torch.zeros(16, 3), r"'m\.weight_scale' has shape \[16, 3\]; expected \[16, 2\]"),
    ("m.weight_shape", torch.tensor([16, 32]), r"'m\.weight_shape' says \[16, 32\]; the model config gives \[16, 64\]"),
])
def test_ct_bad_tensor_names_file_and_tensor(tensor, value, match):
    t = compressed.write_linear("m", quantize_int4(rand_w(16, 64), 32))
    t[tensor] = value
    with pytest.raises(FormatError, match=r"^ckpt/model\.safetensors: tensor " + match):
        compressed.read_linear(Src(t), "m", 16, 64, compressed.Scheme("int4", 32, True, "group"), torch.float32)


def test_ct_config_targets_ignore_and_priority():
    q = compressed.config({128: ["Linear"], 64: ["re:.*\\.mlp\\.down_proj$"]}, "int4", True, ["lm_head"])
    q["ignore"].append("re:model\\.layers\\.1\\..*")
    c = compressed.parse_config(q, "config.json")
    assert c.module("model.layers.0.self_attn.q_proj").group == 128
    assert c.module("model.layers.0.mlp.down_proj").group == 64  # a regex beats the class name
    assert c.module("lm_head") is None and c.module("model.layers.1.mlp.down_proj") is None
    for key, value, match in [("transform_config", {"x": 1}, "transform_config"),
                              ("quantization_status", "frozen", "quantization_status"),
                              ("kv_cache_scheme", {"num_bits": 8}, "kv_cache_scheme")]:
        with pytest.raises(FormatError, match=f"^config.json: quantization_config.{match}"):
            compressed.parse_config({**q, key: value}, "config.json")
    g = q["config_groups"]["group_0"]
    for change, match in [({"input_activations": {"num_bits": 8, "type": "float", "dynamic": False}}, "static activation"),
                          ({"weights": {**g["weights"], "strategy": "block"}}, "strategy: 'block'"),
                          ({"weights": {**g["weights"], "num_bits": 8}}, "num_bits 8 is not supported")]:
        with pytest.raises(FormatError, match=match):
            compressed.parse_config({**q, "config_groups": {"group_0": {**g, **change}}}, "config.json")


def test_group_for_halves_until_it_divides():
    assert group_for(4096, 128, "w") == 128 and group_for(704, 128, "w") == 64 and group_for(96, 128, "w") == 32
    with pytest.raises(FormatError, match="w: K=40 inputs"):
        group_for(40, 128, "w")


def test_int4_from_groups_refuses_groups_off_multiples_of_8():
    q = torch.zeros(4, 16, dtype=torch.uint8)
    g_idx = torch.tensor([0] * 4 + [1] * 12)
    with pytest.raises(FormatError, match="not on multiples of 8"):
        int4_from_groups(q, torch.ones(4, 2), None, g_idx, "f: tensor 'm.g_idx'")


# -- against the real compressed-tensors package --------------------------------------------------------
SHAPES = {"self_attn.q_proj": (64, 64), "self_attn.o_proj": (64, 64), "mlp.down_proj": (64, 96)}


def _skeleton(names_shapes):
    from torch import nn

    root = nn.Module()
    for name, (N, K) in names_shapes.items():
        parent = root
        *path, leaf = name.split(".")
        for p in path:
            if not hasattr(parent, p):
                parent.add_module(p, nn.Module())
            parent = getattr(parent, p)
        parent.add_module(leaf, nn.Linear(K, N, bias=False))
    return root


def _library_checkpoint(kind, group=32):
    """(state dict, quantization_config) as compressed-tensors' compressor writes them, for a few NLD
    linears and the head (ignored); scales from the package's own qparams."""
    ct = pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed (pip install compressed-tensors)")
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (QuantizationArgs, QuantizationConfig, QuantizationScheme,
                                                 apply_quantization_config)
    from compressed_tensors.quantization.utils import calculate_qparams

    names = {f"encoder.layers.0.{k}": s for k, s in SHAPES.items()} | {"diffusion_head": (32, 64)}
    torch.manual_seed(0)
    m = _skeleton(names).to(torch.bfloat16)
    if kind == "fp8":
        args = QuantizationArgs(num_bits=8, type="float", strategy="channel", symmetric=True)
        fmt = "float-quantized"
    else:
        args = QuantizationArgs(num_bits=4, type="int", strategy="group", group_size=group, symmetric=kind == "sym")
        fmt = "pack-quantized"
    qc = QuantizationConfig(config_groups={"group_0": QuantizationScheme(targets=["Linear"], weights=args)},
                            ignore=["diffusion_head"], format=fmt)
    apply_quantization_config(m, qc, show_progress=False)
    for name, mod in m.named_modules():
        if hasattr(mod, "weight_scale"):
            W = mod.weight.float()
            Wg = W[:, None, :] if kind == "fp8" else W.view(W.shape[0], -1, group)
            s, z = calculate_qparams(Wg.amin(-1), Wg.amax(-1), args)
            mod.weight_scale.data = s.to(mod.weight_scale.dtype).reshape(mod.weight_scale.shape)
            if kind == "asym":
                mod.weight_zero_point.data = z.round().to(mod.weight_zero_point.dtype).reshape(mod.weight_zero_point.shape)
    mc = ModelCompressor.from_pretrained_model(m, fmt)
    mc.compress_model(m)
    sd = {k: v.detach().clone() for k, v in m.state_dict().items()}
    q = {"quant_method": "compressed-tensors", **mc.quantization_config.model_dump(exclude=["quant_method"])}
    return ct, sd, q, names


def _library_decompress(q, sd, names):
    from compressed_tensors.compressors.base import BaseCompressor
    from compressed_tensors.quantization import QuantizationConfig, apply_quantization_config

    m = _skeleton(names)
    apply_quantization_config(m, QuantizationConfig.model_validate(q), show_progress=False)
    out = {}
    for name in names:
        mod = m.get_submodule(name)
        scheme = getattr(mod, "quantization_scheme", None)
        if scheme is None:
            continue
        local = {k[len(name) + 1:]: v for k, v in sd.items() if k.startswith(name + ".")}
        out[name] = BaseCompressor.load_from_registry(scheme.format).decompress(local, scheme)["weight"]
    return out


@pytest.mark.parametrize("kind", ["sym", "asym", "fp8"])
def test_reader_on_checkpoints_the_package_writes(kind):
    _, sd, q, names = _library_checkpoint(kind)
    ref = _library_decompress(q, sd, names)
    c = compressed.parse_config(q, "config.json")
    assert c.module("diffusion_head") is None
    for name, (N, K) in names.items():
        if name == "diffusion_head":
            continue
        r, perm = compressed.read_linear(Src(sd), name, N, K, c.module(name), torch.bfloat16)
        assert perm is None and isinstance(r, Fp8Weight if kind == "fp8" else Int4Weight)
        assert torch.equal(dequantize(r).to(ref[name].dtype), ref[name]), name


@pytest.mark.parametrize("weights,sym", [("int4", True), ("int4", False), ("fp8", True)])
def test_package_decompresses_what_trikern_writes(weights, sym):
    """Including a per-module group size (the embedded model's K = 704 takes 64 for 128) expressed
    as a second config group with a regex target, which must win over 'Linear'."""
    pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed (pip install compressed-tensors)")
    names = {"model.layers.0.self_attn.q_proj": (32, 256), "model.layers.0.mlp.down_proj": (32, 192)}
    spec = Spec(weights, 128, sym)
    sd, mine = {}, {}
    for i, (name, (N, K)) in enumerate(names.items()):
        w = quantize_weight(rand_w(N, K, i).to(torch.bfloat16), spec)
        mine[name] = w
        sd.update(compressed.write_linear(name, w))
    assert weights == "fp8" or mine["model.layers.0.mlp.down_proj"].group == 64
    q = compressed.config({128: ["Linear"], 64: ["re:.*\\.mlp\\.down_proj$"]}, weights, sym, ["lm_head"])
    ref = _library_decompress(q, sd, names)
    for name, w in mine.items():
        assert torch.equal(dequantize(w).to(ref[name].dtype), ref[name]), name
