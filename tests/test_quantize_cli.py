"""`trikern quantize SRC DST`: a standard-format quantized checkpoint (compressed-tensors, or GPTQ),
written atomically, that trikern loads back to exactly the weights quantizing while loading gives,
with the tokenizer and the draft LoRA copied; bad requests are one error and leave nothing behind."""
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from synth import write_lora, write_nld_checkpoint
from util import CHILD_ENV, nld_config_dict

import trikern
from trikern.cli import main
from trikern.config import ModelConfig
from trikern.kernels.qweight import dequantize
from trikern.loading import load_model
from trikern.model import QuantLinear

DEFAULT = Path(trikern.__file__).parent / "assets" / "default"


def same_weights(a, b):
    n = 0
    for (name, ma), (_, mb) in zip(a.named_modules(), b.named_modules()):
        if isinstance(ma, QuantLinear) or isinstance(mb, QuantLinear):
            assert isinstance(ma, QuantLinear) and isinstance(mb, QuantLinear), name
            assert torch.equal(dequantize(ma.qweight), dequantize(mb.qweight)), name
            n += 1
    assert n == 4 * a.cfg.num_hidden_layers
    assert torch.equal(a.embed_tokens.weight, b.embed_tokens.weight)


@pytest.mark.parametrize("args,load_kw", [
    (["--weights", "int4"], {"quantize": "int4"}),
    (["--weights", "fp8"], {"quantize": "fp8"}),
])
def test_quantizes_the_embedded_model(tmp_path, args, load_kw):
    dst = tmp_path / "q"
    assert main(["quantize", str(DEFAULT), str(dst), *args, "--no-progress"]) == 0
    cfg = json.loads((dst / "config.json").read_text())
    q = cfg["quantization_config"]
    assert q["quant_method"] == "compressed-tensors" and q["ignore"] == ["diffusion_head"]
    if args[1] == "int4":  # the MLP width 704 takes group 64: a second config group, by regex
        groups = {g["weights"]["group_size"]: g["targets"] for g in q["config_groups"].values()}
        assert groups == {128: ["Linear"], 64: ["re:.*\\.mlp\\.down_proj$"]}
    for f in ("tokenizer.json", "tokenizer_config.json"):
        assert (dst / f).read_bytes() == (DEFAULT / f).read_bytes()
    assert (dst / "model.safetensors").stat().st_size < 0.75 * (DEFAULT / "model.safetensors").stat().st_size
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary folder left
    same_weights(load_model(dst, device="cpu", dtype="fp32"), load_model(DEFAULT, device="cpu", dtype="fp32", **load_kw))
    m = trikern.load(str(dst), device="cpu", dtype="fp32")
    assert m.generate("def f(x):", max_new_tokens=4).text


@pytest.mark.parametrize("fmt,sym", [("gptq", True), ("gptq", False), ("compressed-tensors", False)])
def test_sharded_source_with_lora(tmp_path, fmt, sym):
    src = write_nld_checkpoint(tmp_path / "src", shards=3, lora=True)
    dst = tmp_path / "dst"
    flags = ["--format", fmt, "--group-size", "32"] + ([] if sym else ["--asymmetric"])
    assert main(["quantize", str(src), str(dst), "--weights", "int4", "--no-progress", *flags]) == 0
    index = json.loads((dst / "model.safetensors.index.json").read_text())
    assert sorted(set(index["weight_map"].values())) == sorted(p.name for p in src.glob("*.safetensors"))
    assert (dst / "linear_spec_lora" / "adapter_model.safetensors").is_file()
    q = load_model(dst, device="cpu", dtype="fp32")
    assert q.layers[0].self_attn.lora is not None
    same_weights(q, load_model(src, device="cpu", dtype="fp32", quantize="int4", group_size=32)
                 if sym else q)  # quantize= is symmetric; asymmetric: checked by the reload alone
    assert (q.layers[0].mlp.down_proj.zeros is None) == sym


def test_refusals_leave_nothing_behind(tmp_path, capsys):
    src = write_nld_checkpoint(tmp_path / "src")
    dst = tmp_path / "dst"
    dst.mkdir()
    assert main(["quantize", str(src), str(dst), "--weights", "int4"]) == 2
    assert "already exists (pass --overwrite" in capsys.readouterr().err
    assert main(["quantize", str(src), str(tmp_path / "x"), "--weights", "fp8", "--format", "gptq"]) == 2
    assert "format 'gptq' holds int4 weights only" in capsys.readouterr().err
    assert main(["quantize", str(src), str(tmp_path / "x"), "--weights", "int4", "--group-size", "48"]) == 2
    assert "K=64 inputs is not a multiple of group size 48" in capsys.readouterr().err
    assert main(["quantize", str(src), str(dst), "--weights", "int4", "--no-progress", "--overwrite"]) == 0
    assert main(["quantize", str(dst), str(tmp_path / "y"), "--weights", "int4"]) == 2
    assert "already quantized (compressed-tensors)" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]
    assert "quantization_config" in json.loads((dst / "config.json").read_text())


def test_as_a_subprocess(tmp_path):
    d = nld_config_dict()
    src = write_nld_checkpoint(tmp_path / "src")
    write_lora(src / "linear_spec_lora", ModelConfig.from_dict(d))
    r = subprocess.run([sys.executable, "-m", "trikern", "quantize", str(src), str(tmp_path / "dst"), "--weights",
                        "fp8"], capture_output=True, text=True, env=CHILD_ENV, timeout=300)
    assert r.returncode == 0, r.stderr
    assert "quantizing src (fp8)" in r.stderr and "wrote" in r.stderr  # the progress bar, then the summary
    assert load_model(tmp_path / "dst", device="cpu").layers[1].mlp.gate_up_proj.weight.dtype == torch.float8_e4m3fn


def test_calibration_quantizes_with_gptq(tmp_path):
    import os  # noqa: PLC0415

    from trikern.train.distill import BatchedCausal  # noqa: PLC0415

    text = tmp_path / "calib.txt"
    text.write_text(Path(os.__file__).read_text()[:20000])  # stdlib code, like the model's training data
    dst = tmp_path / "q"
    assert main(["quantize", str(DEFAULT), str(dst), "--weights", "int4", "--calibration", str(text),
                 "--calibration-tokens", "2048", "--format", "gptq", "--no-progress"]) == 0
    gq = load_model(dst, device="cpu", dtype="fp32", lora=False)
    rtn = load_model(DEFAULT, device="cpu", dtype="fp32", lora=False, quantize="int4")
    ref = load_model(DEFAULT, device="cpu", dtype="fp32", lora=False)
    assert sum(isinstance(m, QuantLinear) for m in gq.modules()) == 4 * gq.cfg.num_hidden_layers
    a, b = gq.layers[0].mlp.gate_up_proj.qweight, rtn.layers[0].mlp.gate_up_proj.qweight
    assert a.group == b.group and not torch.equal(dequantize(a), dequantize(b))  # GPTQ, not round to nearest
    ids = trikern.load(DEFAULT).tokenizer.encode(text.read_text())[:512]
    x = torch.tensor(ids[:4 * 128]).view(4, 128)
    with torch.inference_mode():
        out = {k: m.logits(BatchedCausal(m, 4).hidden(x)) for k, m in (("gptq", gq), ("rtn", rtn), ("ref", ref))}
    err = {k: ((out[k] - out["ref"]).norm() / out["ref"].norm()).item() for k in ("gptq", "rtn")}
    assert err["gptq"] < err["rtn"], err  # on its calibration text, GPTQ's model is the closer one


def test_calibration_refusals(tmp_path, capsys):
    assert main(["quantize", str(DEFAULT), str(tmp_path / "a"), "--weights", "fp8", "--calibration", "x.txt"]) == 2
    assert "--calibration x.txt: file not found" in capsys.readouterr().err  # fp8 calibrates too (GPTQ)
    assert main(["quantize", str(DEFAULT), str(tmp_path / "b"), "--weights", "int4", "--calibration",
                 str(tmp_path / "none.txt")]) == 2
    assert "none.txt: file not found" in capsys.readouterr().err
    short = tmp_path / "short.txt"
    short.write_text("x = 1\n")
    assert main(["quantize", str(DEFAULT), str(tmp_path / "c"), "--weights", "int4", "--calibration", str(short)]) == 2
    assert "GPTQ needs at least one window" in capsys.readouterr().err
    assert not any(p.name.startswith(("a", "b", "c", ".")) for p in tmp_path.iterdir() if p.is_dir())
