"""The CPU's features decide the default CPU dtype: bf16 where the CPU computes in bf16, fp32 on an
AVX2-only CPU (emulated here by substituting the detected features); the stats and `--version` say
which and why; bf16 stays available on request; no warning is raised at the first matmul."""
import warnings

import pytest
import torch

import trikern
from trikern import cpu_features
from trikern.cpu_features import CpuFeatures
from trikern.loading import resolve_dtype

AVX2 = CpuFeatures(capability="AVX2", native_bf16=False, amx=False, onednn_bf16=False)
SPR = CpuFeatures(capability="AVX512", native_bf16=True, amx=True, onednn_bf16=True)
SKYLAKE = CpuFeatures(capability="AVX512", native_bf16=False, amx=False, onednn_bf16=True)


@pytest.mark.parametrize("f, dtype", [(AVX2, torch.float32), (SKYLAKE, torch.float32), (SPR, torch.bfloat16)])
def test_default_dtype_follows_native_bf16(f, dtype, monkeypatch):
    monkeypatch.setattr(cpu_features, "detect", lambda: f)
    assert resolve_dtype(None, torch.device("cpu")) == dtype
    assert cpu_features.default_dtype() == (dtype, f.dtype_reason)
    assert f.dtype_reason.startswith(str(dtype).removeprefix("torch.") + ": ")
    assert resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16  # still available on request
    assert "no oneDNN bf16 packing" in AVX2.summary() and "no native bf16" in AVX2.summary()


def test_this_cpu_is_detected_consistently():
    f = cpu_features.detect()
    assert f.capability == torch.backends.cpu.get_cpu_capability()
    assert f.amx <= f.native_bf16  # AMX implies native bf16 (it is counted as such)
    assert f.default_dtype == (torch.bfloat16 if f.native_bf16 else torch.float32)


def test_stats_say_which_dtype_and_why(monkeypatch):
    monkeypatch.setattr(cpu_features, "detect", lambda: AVX2)
    m = trikern.load(device="cpu")
    assert m.model.embed_tokens.weight.dtype == torch.float32
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a missing fast path is logged, never warned about
        r = m.generate("def f(x):", max_new_tokens=3)
    assert r.stats["dtype"] == "float32" and r.stats["dtype_reason"] == AVX2.dtype_reason
    m16 = trikern.load(device="cpu", dtype="bf16")
    r = m16.generate("def f(x):", max_new_tokens=3)
    assert r.stats["dtype"] == "bfloat16" and r.stats["dtype_reason"].startswith("bfloat16: requested")
    assert AVX2.dtype_reason in r.stats["dtype_reason"]


def test_last_level_cache_size_from_sysfs(tmp_path):
    """The CPU linear chooser sizes its cache-evicting sweep by this (kernels/cpu/linear.py)."""
    for index, size in (("index0", "32K"), ("index2", "512K"), ("index3", "8192K")):
        (tmp_path / index).mkdir()
        (tmp_path / index / "size").write_text(size + "\n")
    (tmp_path / "index4").mkdir()  # unreadable entries are skipped
    assert cpu_features.last_level_cache_bytes(str(tmp_path)) == 8 << 20
    assert cpu_features.last_level_cache_bytes(str(tmp_path / "none"), default=123) == 123
    assert cpu_features.last_level_cache_bytes() > 0  # this machine's, or the default
