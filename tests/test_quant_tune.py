"""trikern/quant/tune.py: distillation moves only the int4 group scales (codes, zero points, act-order
and the layout kept), brings the quantized model's distributions closer to the 16-bit model's on its
windows, and leaves the model untouched when it fails; `trikern quantize --tune-scales` writes a
checkpoint that loads back to the tuned weights."""
import copy
import os
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from util import random_model

import trikern
from trikern.cli import main
from trikern.kernels.qweight import dequantize
from trikern.loading import load_model
from trikern.model import QuantLinear
from trikern.quant import Spec
from trikern.quant.calibrate import gptq_quantize_model
from trikern.quant.tune import _Tunable, tune_scales
from trikern.train.distill import BatchedCausal

DEFAULT = Path(trikern.__file__).parent / "assets" / "default"


def kl(m, teacher, windows):
    with torch.inference_mode():
        p = F.log_softmax(teacher.logits(BatchedCausal(teacher, windows.shape[0]).hidden(windows)).float(), -1)
        q = F.log_softmax(m.logits(BatchedCausal(m, windows.shape[0]).hidden(windows)).float(), -1)
    return F.kl_div(q.flatten(0, 1), p.flatten(0, 1), log_target=True, reduction="batchmean").item()


def quant_linears(m):
    return {n: x for n, x in m.named_modules() if isinstance(x, QuantLinear)}


@pytest.mark.parametrize("spec,act_order", [(Spec("int4", 32, symmetric=False), True), (Spec("int4", 64), False)])
def test_only_the_scales_move_and_the_model_gets_closer(spec, act_order):
    teacher = random_model(dtype=torch.float32)
    m = copy.deepcopy(teacher)
    windows = torch.randint(0, m.cfg.vocab_size, (6, 24), generator=torch.Generator().manual_seed(4))
    gptq_quantize_model(m, spec, windows, batch=2, act_order=act_order)
    x = torch.randn(5, m.cfg.hidden_size)
    for lin in (m.layers[0].self_attn.qkv_proj, m.layers[1].mlp.gate_up_proj):  # the stand-in computes the same
        torch.testing.assert_close(_Tunable(lin)(x), lin(x), rtol=1e-5, atol=1e-5)
    before = {n: x.qweight for n, x in quant_linears(m).items()}
    perms = {n: x.perm for n, x in quant_linears(m).items()}
    grads = [p.requires_grad for p in m.parameters()]
    kl0 = kl(m, teacher, windows)
    losses = tune_scales(m, teacher, windows, epochs=4, lr=3e-3, batch=2)
    after = quant_linears(m)
    assert len(losses) == 4 and losses[-1] < losses[0], losses
    assert kl(m, teacher, windows) < 0.9 * kl0, (kl(m, teacher, windows), kl0)
    assert after.keys() == before.keys() and len(after) == 4 * m.cfg.num_hidden_layers
    moved = 0
    for n, x in after.items():
        w, w0 = x.qweight, before[n]
        assert torch.equal(w.packed, w0.packed) and w.group == w0.group  # the same codes
        assert (w.zeros is None) == (w0.zeros is None) and (w.zeros is None or torch.equal(w.zeros, w0.zeros))
        assert (x.perm is None) == (perms[n] is None) and (x.perm is None or torch.equal(x.perm, perms[n]))
        assert w.scales.dtype == w0.scales.dtype and (w.scales > 0).all()
        moved += not torch.equal(w.scales, w0.scales)
    assert moved == len(after)
    assert [p.requires_grad for p in m.parameters()] == grads  # no new parameters, flags as they were


def test_same_seed_same_scales_and_a_failure_changes_nothing():
    teacher = random_model(dtype=torch.float32)
    windows = torch.randint(0, teacher.cfg.vocab_size, (4, 16), generator=torch.Generator().manual_seed(5))
    runs = []
    for _ in range(2):
        m = copy.deepcopy(teacher)
        gptq_quantize_model(m, Spec("int4", 32), windows, batch=2)
        tune_scales(m, teacher, windows, epochs=1, batch=2, seed=7)
        runs.append([x.qweight.scales for x in quant_linears(m).values()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))

    m = copy.deepcopy(teacher)
    gptq_quantize_model(m, Spec("int4", 32), windows, batch=2)
    lins = quant_linears(m)
    bad = windows.clone()
    bad[-1, -1] = teacher.cfg.vocab_size + 5  # not a token: the teacher's embedding fails mid-epoch
    with pytest.raises(IndexError):
        tune_scales(m, teacher, bad, epochs=1, batch=2)
    assert all(quant_linears(m)[n] is x for n, x in lins.items())  # the very same linears, untuned


def test_refusals():
    teacher = random_model(dtype=torch.float32)
    w = torch.zeros(2, 8, dtype=torch.long)
    with pytest.raises(ValueError, match="no int4 layer linears"):
        tune_scales(copy.deepcopy(teacher), teacher, w)
    with pytest.raises(ValueError, match=r"windows: expected token ids \[n, T\]"):
        tune_scales(teacher, teacher, torch.zeros(0, 8, dtype=torch.long))
    with pytest.raises(ValueError, match="epochs=0"):
        tune_scales(teacher, teacher, w, epochs=0)


def test_quantize_cli_writes_the_tuned_scales(tmp_path, capsys):
    text = tmp_path / "calib.txt"
    text.write_text(Path(os.__file__).read_text()[:12000])
    dst, plain = tmp_path / "tuned", tmp_path / "plain"
    common = ["--weights", "int4", "--asymmetric", "--calibration", str(text), "--calibration-tokens", "1024",
              "--act-order", "--search-ranges", "--format", "gptq", "--no-progress"]
    assert main(["quantize", str(DEFAULT), str(dst), *common, "--tune-scales", "1"]) == 0
    assert "ranges searched, scales tuned 1 epoch(s)" in capsys.readouterr().err
    assert main(["quantize", str(DEFAULT), str(plain), *common]) == 0
    a, b = (quant_linears(load_model(p, device="cpu", dtype="fp32", lora=False)) for p in (dst, plain))
    for n in a:
        wa, wb = a[n].qweight, b[n].qweight
        assert torch.equal(wa.packed, wb.packed) and torch.equal(wa.zeros, wb.zeros), n  # same GPTQ codes
    # one Adam step moves a scale ~0.1%, under a bf16 scale's step for some groups: most linears change
    assert sum(not torch.equal(dequantize(a[n].qweight), dequantize(b[n].qweight)) for n in a) > len(a) // 2

    for args, msg in ((["--weights", "fp8", "--calibration", str(text), "--tune-scales", "1"], "fp8 has none"),
                      (["--weights", "int4", "--tune-scales", "1"], "it needs --calibration"),
                      (["--weights", "int4", "--search-ranges"], "--search-ranges: a GPTQ option"),
                      (["--weights", "int4", "--calibration", str(text), "--tune-scales", "-1"], "epochs >= 0")):
        assert main(["quantize", str(DEFAULT), str(tmp_path / "x"), *args]) == 2
        assert msg in capsys.readouterr().err, args
    assert not (tmp_path / "x").exists()
