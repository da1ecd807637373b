"""`trikern quantize --calibration F --act-order [--sequential]`: act-order / layer-by-layer GPTQ from
the CLI. The act-order GPTQ checkpoint (qweight rows in the original column order, each column's
group in g_idx, desc_act) loads back to exactly the in-memory act-order model (same logits, fp32);
--sequential checkpoints too, and the compressed-tensors package decompresses theirs; compressed-
tensors cannot hold act-order groups, so that and the flags without --calibration are one error.
The loader also reads act order as older llm-compressor wrote it (actorder "group", weight_g_idx)."""
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from synth import write_json, write_weights
from test_quant_formats import _library_decompress

import trikern
from trikern.cli import main
from trikern.kernels.qweight import dequantize, pack_int4, unpack_int4
from trikern.loading import CheckpointError, load_model
from trikern.model import QuantLinear
from trikern.quant import Spec, compressed
from trikern.quant.calibrate import gptq_quantize_model
from trikern.tokenizer import Tokenizer
from trikern.train.distill import BatchedCausal

SPEC = Spec("int4", 32, symmetric=False)  # zero points: the best int4 on SmolLM2 with act order
FLAGS = ["--weights", "int4", "--group-size", "32", "--asymmetric", "--calibration-tokens", "1024", "--no-progress"]
PIECES = {"self_attn.qkv_proj": ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj"),
          "self_attn.o_proj": ("self_attn.o_proj",), "mlp.gate_up_proj": ("mlp.gate_proj", "mlp.up_proj"),
          "mlp.down_proj": ("mlp.down_proj",)}


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    text = tmp_path_factory.mktemp("calib") / "calib.txt"
    text.write_text(Path(os.__file__).read_text()[:20000])  # stdlib code: thousands of tokens
    return text


def in_memory(src, text, **kw):
    """The model GPTQ gives in memory on the windows `trikern quantize` takes: the first 1024 tokens
    in windows of 512, fp32, scales in the checkpoint's dtype (bf16)."""
    ids = Tokenizer.from_dir(src).encode(text.read_text())[:1024]
    m = load_model(src, device="cpu", dtype="fp32", lora=False)
    return gptq_quantize_model(m, SPEC, torch.tensor(ids).view(2, 512), scale_dtype=torch.bfloat16, **kw)


def logits(m, seed=0):
    x = torch.randint(0, m.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(seed))
    with torch.inference_mode():
        return m.logits(BatchedCausal(m, 2).hidden(x))


def test_act_order_gptq_checkpoint_loads_back_exactly(chat_ckpt, calib, tmp_path):
    dst = tmp_path / "q"
    assert main(["quantize", str(chat_ckpt), str(dst), "--calibration", str(calib), "--act-order", "--format", "gptq",
                 *FLAGS]) == 0
    q = json.loads((dst / "config.json").read_text())["quantization_config"]
    assert q["quant_method"] == "gptq" and q["desc_act"] is True and q["group_size"] == 32 and q["sym"] is False
    ref = in_memory(chat_ckpt, calib, act_order=True)
    got = trikern.load(str(dst), device="cpu", dtype="fp32").model
    assert torch.equal(logits(got), logits(ref))  # bit for bit: the export is the loader's inverse

    t = load_file(dst / "model.safetensors")
    for fused, pieces in PIECES.items():
        lin = ref.layers[1].get_submodule(fused)
        K, g = lin.in_features, lin.group
        assert torch.equal(got.layers[1].get_submodule(fused).perm, lin.perm)
        q_mem, start = unpack_int4(lin.packed), 0  # [N, K], columns in act order
        for p in pieces:
            g_idx, qweight = t[f"encoder.layers.1.{p}.g_idx"], t[f"encoder.layers.1.{p}.qweight"]
            assert g_idx.dtype == torch.int32 and g_idx.shape == (K,)
            assert g_idx.tolist() != sorted(g_idx.tolist())  # act order: not k // group
            assert sorted(g_idx.tolist()) == [k // g for k in range(K)]
            assert torch.equal(g_idx[lin.perm], torch.arange(K, dtype=torch.int32) // g)
            q_file = unpack_int4(qweight.T.contiguous())  # [N, K], rows of qweight in original column order
            assert torch.equal(q_file[:, lin.perm], q_mem[start:start + q_file.shape[0]]), p
            start += q_file.shape[0]


@pytest.mark.parametrize("fmt,act_order", [("compressed-tensors", False), ("gptq", True)])
def test_sequential_runs_and_loads(chat_ckpt, calib, tmp_path, capsys, fmt, act_order):
    dst = tmp_path / "q"
    assert main(["quantize", str(chat_ckpt), str(dst), "--calibration", str(calib), "--sequential", "--format", fmt,
                 *(["--act-order"] if act_order else []), *FLAGS]) == 0
    assert "layer by layer" in capsys.readouterr().err
    ref = in_memory(chat_ckpt, calib, sequential=True, act_order=act_order)
    got = load_model(dst, device="cpu", dtype="fp32")
    assert sum(isinstance(m, QuantLinear) for m in got.modules()) == 4 * got.cfg.num_hidden_layers
    assert torch.equal(logits(got), logits(ref))
    # layer by layer differs from one pass: layer 1's Hessians saw the quantized layer 0
    one_pass = in_memory(chat_ckpt, calib, act_order=act_order)
    assert not torch.equal(dequantize(one_pass.layers[1].mlp.down_proj.qweight),
                           dequantize(ref.layers[1].mlp.down_proj.qweight))
    if fmt == "compressed-tensors":  # the real package decompresses it to trikern's weights
        pytest.importorskip("compressed_tensors", reason="compressed-tensors not installed")
        sd = load_file(dst / "model.safetensors")
        names = {f"encoder.layers.{i}.{p}": tuple(sd[f"encoder.layers.{i}.{p}.weight_shape"].tolist())
                 for i in range(2) for ps in PIECES.values() for p in ps}
        q = json.loads((dst / "config.json").read_text())["quantization_config"]
        lib = _library_decompress(q, sd, names)
        for i in range(2):
            for fused, pieces in PIECES.items():
                have = torch.cat([lib[f"encoder.layers.{i}.{p}"] for p in pieces])  # in the scales' bf16
                want = dequantize(got.layers[i].get_submodule(fused).qweight).to(have.dtype)
                assert torch.equal(have, want), (i, fused)


@pytest.mark.parametrize("extra,message", [
    (["--act-order", "--format", "gptq"], "--act-order: a GPTQ option; it needs --calibration FILE"),
    (["--sequential"], "--sequential: a GPTQ option; it needs --calibration FILE"),
    (["--act-order", "--calibration", "CALIB"], "--act-order: format 'compressed-tensors' cannot hold act-order "
                                                "groups (compressed-tensors removed actorder 'group' and its "
                                                "weight_g_idx); add --format gptq"),
])
def test_bad_flag_combinations_are_one_error(chat_ckpt, calib, tmp_path, capsys, extra, message):
    extra = [str(calib) if a == "CALIB" else a for a in extra]
    weights = [] if "--weights" in extra else ["--weights", "int4"]
    assert main(["quantize", str(chat_ckpt), str(tmp_path / "q"), *weights, *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1, err
    assert list(tmp_path.iterdir()) == []  # nothing written, not even a temporary folder


def test_reads_llm_compressor_actorder_group(chat_ckpt, calib, tmp_path):
    """Older llm-compressor wrote act-order GPTQ as pack-quantized with actorder "group": the packed
    columns in the original order and `weight_g_idx` (removed in compressed-tensors 0.20, which
    cannot write it; the loader still reads it)."""
    ref = in_memory(chat_ckpt, calib, act_order=True)
    tensors = load_file(chat_ckpt / "model.safetensors")
    for i in range(ref.cfg.num_hidden_layers):
        for fused, pieces in PIECES.items():
            lin = ref.layers[i].get_submodule(fused)
            inv = torch.argsort(lin.perm)  # position of each original column in the act order
            q, start = unpack_int4(lin.packed)[:, inv], 0
            for p in pieces:
                name = f"encoder.layers.{i}.{p}"
                n = tensors.pop(f"{name}.weight").shape[0]
                w = type(lin.qweight)(pack_int4(q[start:start + n]), lin.scales[start:start + n],
                                      lin.zeros[start:start + n], lin.group)
                tensors.update(compressed.write_linear(name, w))
                tensors[f"{name}.weight_g_idx"] = (inv // lin.group).to(torch.int32)
                start += n
    qc = compressed.config({32: ["Linear"]}, "int4", False, ["diffusion_head"])
    qc["config_groups"]["group_0"]["weights"]["actorder"] = "group"
    write_json(tmp_path / "config.json", {**json.loads((chat_ckpt / "config.json").read_text()),
                                          "quantization_config": qc})
    write_weights(tmp_path, tensors)
    got = load_model(tmp_path, device="cpu", dtype="fp32")
    assert torch.equal(logits(got), logits(ref))

    tensors.pop("encoder.layers.0.mlp.down_proj.weight_g_idx")
    write_weights(tmp_path, tensors)
    with pytest.raises(CheckpointError, match=r"model.safetensors: actorder 'group' but tensor "
                       r"'encoder.layers.0.mlp.down_proj.weight_g_idx' is missing"):
        load_model(tmp_path, device="cpu", dtype="fp32")
