"""The CPU bf16 matmul with a oneDNN-packed weight gives F.linear's bits (odd batch sizes, sliced
rows), follows in-place weight changes, and leaves autograd and other dtypes to F.linear; a model
decodes the same tokens with it on and off."""
import pytest
import torch
import torch.nn.functional as F
from util import random_model, tiny_config

from trikern import cpu_linear

pytestmark = pytest.mark.skipif(not cpu_linear.enabled, reason="this torch build has no oneDNN linear ops")


class Holder:
    pass


@pytest.mark.parametrize("M", [1, 2, 7, 33])
@pytest.mark.parametrize("out_f,in_f", [(96, 64), (704, 256), (5, 3)])
def test_same_bits_as_f_linear(M, out_f, in_f):
    g = torch.Generator().manual_seed(M)
    w = torch.randn(out_f, in_f, generator=g).bfloat16()
    x = torch.randn(M + 3, in_f, generator=g).bfloat16()[2:2 + M]  # rows of a larger tensor
    with torch.inference_mode():
        assert torch.equal(cpu_linear.linear(x, w, Holder()), F.linear(x, w))


def test_packed_copy_follows_in_place_changes():
    w = torch.randn(32, 16).bfloat16()
    x = torch.randn(3, 16).bfloat16()
    h = Holder()
    with torch.no_grad():
        first = cpu_linear.linear(x, w, h)
        packed = h._cpu_packed
        assert torch.equal(cpu_linear.linear(x, w, h), first) and h._cpu_packed is packed  # reused
        w.mul_(2)
        assert torch.equal(cpu_linear.linear(x, w, h), F.linear(x, w))


def test_autograd_and_other_dtypes_take_f_linear():
    w = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(2, 4)
    h = Holder()
    y = cpu_linear.linear(x, w, h)
    y.sum().backward()
    assert w.grad is not None and not hasattr(h, "_cpu_packed")
    with torch.no_grad():
        cpu_linear.linear(x.bfloat16(), w.detach().bfloat16(), h)
    assert hasattr(h, "_cpu_packed")


def test_model_decodes_the_same_tokens_with_and_without(monkeypatch):
    from decode_helpers import run

    m = random_model(tiny_config(), seed=2, dtype=torch.bfloat16)
    on, _, _ = run(m, [1, 2, 3], "spec-linear", max_new_tokens=12, block_size=4)
    assert any("_cpu_packed" in mod.__dict__ for mod in m.modules())
    monkeypatch.setattr(cpu_linear, "enabled", False)
    off, _, _ = run(m, [1, 2, 3], "spec-linear", max_new_tokens=12, block_size=4)
    assert on == off
