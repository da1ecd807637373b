"""GPTQ for fp8 (trikern/quant/calibrate.py, `trikern quantize --weights fp8 --calibration F`): each
column rounded to e4m3 under the per-row scale round to nearest uses, its error pushed onto the
later columns, lowers the output error on the calibration inputs; the checkpoint is the same
compressed-tensors float-quantized format as RTN fp8's and loads back to exactly the in-memory
model (act-order included: fp8 has no groups, so its columns go back in place)."""
import json
import os
from pathlib import Path

import pytest
import torch
from test_quant_gptq import correlated_inputs, logits as model_logits
from util import random_model

import trikern
from trikern.cli import main
from trikern.kernels.qweight import Fp8Weight, check_weight, dequantize, quantize_fp8
from trikern.loading import load_model
from trikern.model import QuantLinear
from trikern.quant import Spec, quantize_weight
from trikern.quant.calibrate import gptq_quantize_model, gptq_weight
from trikern.tokenizer import Tokenizer
from trikern.train.distill import BatchedCausal

DEFAULT = Path(trikern.__file__).parent / "assets" / "default"
FP8 = Spec("fp8")


def test_fp8_gptq_beats_round_to_nearest_on_the_calibration_inputs():
    N, K = 48, 256
    X = correlated_inputs(1024, K)
    W = 0.05 * torch.randn(N, K, generator=torch.Generator().manual_seed(1))
    w = gptq_weight(W, X.T @ X / X.shape[0], FP8, torch.bfloat16)
    rtn = quantize_weight(W, FP8)
    assert isinstance(w, Fp8Weight) and check_weight(w) == (N, K)
    assert torch.equal(w.scale, quantize_fp8(W).scale)  # the scale is RTN's, fixed up front
    mse = lambda Q: ((X @ (Q - W).T) ** 2).mean().item()  # noqa: E731 - the x^T H x output error
    assert mse(dequantize(w)) < 0.5 * mse(dequantize(rtn)), (mse(dequantize(w)), mse(dequantize(rtn)))
    assert ((dequantize(w) - W) ** 2).mean() > ((dequantize(rtn) - W) ** 2).mean()  # not closer weight by weight
    # without correlated inputs there is nothing to trade: the identity Hessian gives RTN itself
    same = gptq_weight(W, torch.eye(K), FP8, torch.float32, damp=0.0)
    assert torch.equal(same.weight.view(torch.uint8), rtn.weight.view(torch.uint8))


def test_fp8_saturates_a_corrected_value_past_the_scale():
    """The scale is fixed before the sweep, so a correction can push a value past 448 (here column
    0 rounds 247 down to 240 and anti-correlated inputs push column 1 up by about 7): it saturates."""
    W = torch.tensor([[247 / 448, 1.0], [-247 / 448, -1.0]])
    w = gptq_weight(W, torch.tensor([[1.0, -0.99], [-0.99, 1.0]]), FP8, torch.float32, damp=0.0)
    assert w.weight.float().tolist() == [[240.0, 448.0], [-240.0, -448.0]]


@pytest.mark.parametrize("act_order", [False, True])
def test_fp8_gptq_quantizes_a_model_in_place(act_order):
    m = random_model(dtype=torch.float32)
    windows = torch.randint(0, m.cfg.vocab_size, (4, 24), generator=torch.Generator().manual_seed(2))
    ref = model_logits(m, windows)
    rtn = model_logits(load_rtn(m), windows)
    gptq_quantize_model(m, FP8, windows, batch=2, act_order=act_order)
    lins = [x for x in m.modules() if isinstance(x, QuantLinear)]
    assert len(lins) == 4 * m.cfg.num_hidden_layers
    assert all(x.kind is Fp8Weight and x.perm is None for x in lins)  # act order undone: no gather
    got = model_logits(m, windows)
    assert 0 < (got - ref).norm() < (rtn - ref).norm()  # quantized, and closer than RTN on its calibration set


def load_rtn(m):
    """`m`'s weights quantized fp8 round to nearest (a copy)."""
    import copy  # noqa: PLC0415

    r = copy.deepcopy(m)
    for layer in r.layers:
        for name in ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj"):
            layer.set_submodule(name, QuantLinear(quantize_weight(layer.get_submodule(name).weight.detach(), FP8)))
    return r


@pytest.fixture(scope="module")
def calib(tmp_path_factory):
    text = tmp_path_factory.mktemp("calib") / "calib.txt"
    text.write_text(Path(os.__file__).read_text()[:20000])  # stdlib code, like the model's training data
    return text


def test_cli_fp8_calibration(tmp_path, calib, capsys):
    """The embedded model: the checkpoint holds what GPTQ gave in memory, in RTN fp8's format, and on
    its calibration text its logits are closer to the 16-bit model's than RTN fp8's are."""
    rtn_dst, dst = tmp_path / "rtn", tmp_path / "q"
    assert main(["quantize", str(DEFAULT), str(rtn_dst), "--weights", "fp8", "--no-progress"]) == 0
    assert main(["quantize", str(DEFAULT), str(dst), "--weights", "fp8", "--calibration", str(calib),
                 "--calibration-tokens", "2048", "--no-progress"]) == 0
    assert "fp8, calibrated by GPTQ)" in capsys.readouterr().err
    cfg = lambda d: json.loads((d / "config.json").read_text())["quantization_config"]  # noqa: E731
    assert cfg(dst) == cfg(rtn_dst)  # the same format: loaders need nothing new

    ids = Tokenizer.from_dir(DEFAULT).encode(calib.read_text())[:2048]
    T = min(512, json.loads((DEFAULT / "config.json").read_text())["max_position_embeddings"])
    windows = torch.tensor(ids[: len(ids) // T * T]).view(-1, T)
    mem = gptq_quantize_model(load_model(DEFAULT, device="cpu", dtype="fp32", lora=False), FP8, windows)
    gq = load_model(dst, device="cpu", dtype="fp32", lora=False)
    rtn = load_model(rtn_dst, device="cpu", dtype="fp32", lora=False)
    ref = load_model(DEFAULT, device="cpu", dtype="fp32", lora=False)
    for (name, a), (_, b) in zip(gq.named_modules(), mem.named_modules()):
        if isinstance(b, QuantLinear):
            assert isinstance(a, QuantLinear) and a.kind is Fp8Weight, name
            assert torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8)) and torch.equal(a.scale, b.scale)
    assert not torch.equal(gq.layers[0].mlp.gate_up_proj.weight.view(torch.uint8),
                           rtn.layers[0].mlp.gate_up_proj.weight.view(torch.uint8))  # GPTQ, not RTN
    x = torch.tensor(ids[:4 * 128]).view(4, 128)
    with torch.inference_mode():
        out = {k: m.logits(BatchedCausal(m, 4).hidden(x)) for k, m in
               (("gptq", gq), ("mem", mem), ("rtn", rtn), ("ref", ref))}
    assert torch.equal(out["gptq"], out["mem"])  # bit for bit: the export is the loader's inverse
    err = {k: ((out[k] - out["ref"]).norm() / out["ref"].norm()).item() for k in ("gptq", "rtn")}
    assert err["gptq"] < err["rtn"], err


def test_cli_fp8_act_order_writes_columns_in_place(chat_ckpt, calib, tmp_path):
    """fp8 act-order GPTQ exports to compressed-tensors (no g_idx: nothing to permute at load), and
    loads back to exactly the in-memory act-order model."""
    dst = tmp_path / "q"
    assert main(["quantize", str(chat_ckpt), str(dst), "--weights", "fp8", "--calibration", str(calib),
                 "--calibration-tokens", "1024", "--act-order", "--no-progress"]) == 0
    ids = Tokenizer.from_dir(chat_ckpt).encode(calib.read_text())[:1024]
    mem = gptq_quantize_model(load_model(chat_ckpt, device="cpu", dtype="fp32", lora=False), FP8,
                              torch.tensor(ids).view(2, 512), act_order=True)
    plain = gptq_quantize_model(load_model(chat_ckpt, device="cpu", dtype="fp32", lora=False), FP8,
                                torch.tensor(ids).view(2, 512))
    got = load_model(dst, device="cpu", dtype="fp32")
    x = torch.randint(0, got.cfg.vocab_size, (2, 40), generator=torch.Generator().manual_seed(0))
    assert torch.equal(model_logits(got, x), model_logits(mem, x))
    a, b = got.layers[1].mlp.down_proj, plain.layers[1].mlp.down_proj
    assert a.perm is None and not torch.equal(a.weight.view(torch.uint8), b.weight.view(torch.uint8))
    assert not any(k.endswith("g_idx") for k in _keys(dst))


def _keys(folder):
    from safetensors import safe_open  # noqa: PLC0415

    with safe_open(str(folder / "model.safetensors"), framework="pt") as h:
        return list(h.keys())


def test_fp8_gptq_format_is_refused(chat_ckpt, calib, tmp_path, capsys):
    assert main(["quantize", str(chat_ckpt), str(tmp_path / "q"), "--weights", "fp8", "--calibration", str(calib),
                 "--format", "gptq"]) == 2
    err = capsys.readouterr().err
    assert "format 'gptq' holds int4 weights only" in err and err.count("\n") == 1
    assert list(tmp_path.iterdir()) == []
