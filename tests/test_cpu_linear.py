"""The CPU backend's bf16 and fp32 matmuls (trikern/kernels/cpu/linear.py): the packed path (plain for
fp32) gives F.linear's bits and the wide path is within an ulp of the exact product in bf16, within
fp32's summation bound in fp32, as is fp32's transposed path (odd batch sizes, sliced rows);
the choice between them is measured once per (shape, row count (buckets past 32), threads) or forced by
TRIKERN_CPU_LINEAR; both copies follow in-place weight changes; autograd and other dtypes take
F.linear; a model decodes the same tokens with it on and off; a model built for the CPU backend
("auto" too) takes it, one built for the references F.linear.
On a CPU oneDNN cannot pack bf16 for, "packed" is plain F.linear: those tests hold there too, the
packed-copy test is skipped with the reason, and the fallback is tested on every CPU (`no_packing`)."""
import pytest
import torch
import torch.nn.functional as F
from util import random_model, tiny_config

from trikern import cpu_features
from trikern.kernels.cpu import linear as cpu_linear
from trikern.model import Linear

needs_packing = pytest.mark.skipif(not cpu_linear.can_pack, reason="oneDNN cannot pack bf16 weights on this CPU "
                                   "(needs AVX-512 BW/VL/DQ or AVX-NE-CONVERT); the plain fallback is tested instead")


class Holder:
    pass


@pytest.fixture
def path(monkeypatch):
    """Force one path for the test (and forget choices made before it)."""
    def force(name):
        monkeypatch.setenv("TRIKERN_CPU_LINEAR", name)
        monkeypatch.setattr(cpu_linear, "_choices", {})
    return force


def within_an_ulp(y, x, w):
    exact = x.double() @ w.double().T
    ulp = exact.abs().clamp_min(2.0 ** -126) * 2.0 ** -7  # bf16 keeps 8 significant bits
    assert y.dtype == torch.bfloat16 and ((y.double() - exact).abs() <= ulp).all()


def within_fp32_rounding(y, x, w):
    """|y - exact| <= K u sum |x_k w_k| per entry: the bound of any fp32 summation order over K terms."""
    exact = x.double() @ w.double().T
    bound = x.shape[1] * 2.0 ** -24 * (x.double().abs() @ w.double().abs().T) + 1e-30
    assert y.dtype == torch.float32 and ((y.double() - exact).abs() <= bound).all()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("M", [0, 1, 2, 7, 33])
@pytest.mark.parametrize("out_f,in_f", [(96, 64), (704, 256), (5, 3)])
def test_both_paths(M, out_f, in_f, dtype, path):
    g = torch.Generator().manual_seed(M)
    w = torch.randn(out_f, in_f, generator=g).to(dtype)
    x = torch.randn(M + 3, in_f, generator=g).to(dtype)[2:2 + M]  # rows of a larger tensor
    with torch.inference_mode():
        path("packed")
        assert torch.equal(cpu_linear.linear(x, w, Holder()), F.linear(x, w))
        path("wide")
        h = Holder()
        y = cpu_linear.linear(x, w, h)
        (within_an_ulp if dtype == torch.bfloat16 else within_fp32_rounding)(y, x, w)
        if dtype == torch.float32:  # fp32 has no packed copy: "packed" is plain F.linear
            assert h._cpu_layouts.packed is None and h._cpu_layouts.wide.dtype == torch.float32
        path("transposed")
        y = cpu_linear.linear(x, w, Holder())
        assert y.shape == (M, out_f) and y.is_contiguous()
        if dtype == torch.float32:
            within_fp32_rounding(y, x, w)
        else:  # bf16 has no transposed path: the narrow one, F.linear's bits
            assert torch.equal(y, F.linear(x, w))


def test_fp32_and_bf16_choices_are_apart(monkeypatch):
    """The same shape in both dtypes is measured twice: one dtype's winner says nothing of the other's."""
    monkeypatch.delenv("TRIKERN_CPU_LINEAR", raising=False)
    monkeypatch.setattr(cpu_linear, "_choices", {})
    w = torch.randn(64, 32)
    with torch.no_grad():
        for dtype in (torch.float32, torch.bfloat16, torch.float32):
            cpu_linear.linear(torch.randn(2, 32).to(dtype), w.to(dtype), Holder())
    assert [k[4] for k in cpu_linear._choices] == [torch.float32, torch.bfloat16]
    assert cpu_linear._choices[(64, 32, 2, torch.get_num_threads(), torch.float32)] in ("plain", "wide", "transposed")
    assert cpu_linear._choices[(64, 32, 2, torch.get_num_threads(), torch.bfloat16)] in ("packed", "plain", "wide")


def test_choice_is_measured_once_per_shape_bucket_and_threads(monkeypatch):
    monkeypatch.delenv("TRIKERN_CPU_LINEAR", raising=False)
    monkeypatch.setattr(cpu_linear, "_choices", {})
    timed = []
    real = cpu_linear._measure
    monkeypatch.setattr(cpu_linear, "_measure", lambda x, lay: timed.append(x.shape[0]) or real(x, lay))
    w = torch.randn(64, 32).bfloat16()
    with torch.no_grad():
        for rows in (1, 1, 3, 4, 5, 1, 4, 40, 33):
            x = torch.randn(rows, 32).bfloat16()
            within_an_ulp(cpu_linear.linear(x, w, Holder()), x, w)
        cpu_linear.linear(torch.randn(64, 32).bfloat16(), w, Holder())  # past MAX_WIDE_ROWS: timed only unpacked
    # each row count up to MAX_WIDE_ROWS, then buckets (33, 40 and 64 are one: 64), timed only where
    # oneDNN cannot pack (plain F.linear is slow there)
    assert timed == [1, 3, 4, 5] + ([] if cpu_linear.can_pack else [40])
    assert set(cpu_linear._choices.values()) <= {"packed", "wide", "plain"}  # bf16: no transposed path
    assert len(cpu_linear._choices) == 4 + (not cpu_linear.can_pack)
    key = next(iter(cpu_linear._choices))
    assert key[:2] == (64, 32) and key[3] == torch.get_num_threads()


def test_every_timed_call_starts_with_the_weight_out_of_cache(monkeypatch):
    """A forward reads each weight cold (the model outgrows the caches): the chooser times it so."""
    monkeypatch.delenv("TRIKERN_CPU_LINEAR", raising=False)
    monkeypatch.setattr(cpu_linear, "_choices", {})
    events = []
    real_evict, real_wide = cpu_linear._evict, cpu_linear._wide
    monkeypatch.setattr(cpu_linear, "_evict", lambda: events.append("evict") or real_evict())
    monkeypatch.setattr(cpu_linear, "_wide", lambda x, lay: events.append("wide") or real_wide(x, lay))
    with torch.no_grad():
        cpu_linear.linear(torch.randn(4, 32), torch.randn(48, 32), Holder())
    assert events.count("evict") == 3 * cpu_linear._ROUNDS  # plain, wide, transposed: each call
    timed = [i for i, e in enumerate(events) if e == "wide"][:cpu_linear._ROUNDS]  # then maybe the product
    assert len(timed) == cpu_linear._ROUNDS and all(events[i - 1] == "evict" for i in timed)
    assert cpu_linear._sweep.numel() * 4 >= min(cpu_features.last_level_cache_bytes(), 64 << 20)


def test_big_weights_have_no_wide_copy(monkeypatch):
    monkeypatch.setattr(cpu_linear, "MAX_WIDE_BYTES", 1024)
    h = Holder()
    with torch.no_grad():
        cpu_linear.linear(torch.randn(1, 32).bfloat16(), torch.randn(16, 32).bfloat16(), h)  # 2 KiB in fp32
    assert h._cpu_layouts.wide is None and (h._cpu_layouts.packed is not None) == cpu_linear.can_pack


@needs_packing
def test_packed_copy_where_onednn_packs():
    h = Holder()
    w, x = torch.randn(48, 32).bfloat16(), torch.randn(3, 32).bfloat16()
    with torch.no_grad():
        y = cpu_linear._packed(x, cpu_linear._layouts(w, h))
    assert h._cpu_layouts.packed is not None and torch.equal(y, F.linear(x, w))


@pytest.mark.parametrize("forced", ["", "packed", "wide"])
def test_fallback_without_packing(forced, monkeypatch):
    """An AVX2-only CPU (no oneDNN bf16 packing), on any CPU: no packed copy is made, the choice is
    between plain F.linear and wide, a forced "packed" means plain, and the products are right."""
    monkeypatch.setattr(cpu_linear, "can_pack", False)
    monkeypatch.setattr(cpu_linear, "_choices", {})
    monkeypatch.setenv("TRIKERN_CPU_LINEAR", forced)
    g = torch.Generator().manual_seed(3)
    w = torch.randn(96, 64, generator=g).bfloat16()
    h = Holder()
    with torch.no_grad():
        for rows in (1, 5, 40):
            x = torch.randn(rows, 64, generator=g).bfloat16()
            y = cpu_linear.linear(x, w, h)
            within_an_ulp(y, x, w)
            if cpu_linear._choices[(96, 64, cpu_linear.row_bucket(rows), torch.get_num_threads(),
                                   torch.bfloat16)] == "plain":
                assert torch.equal(y, F.linear(x, w))
    assert h._cpu_layouts.packed is None
    assert set(cpu_linear._choices.values()) <= {"plain", "wide"} and len(cpu_linear._choices) == 3  # 40 rows too
    if forced:
        assert set(cpu_linear._choices.values()) == {"plain" if forced == "packed" else "wide"}


def test_a_bad_forced_path_names_the_variable(path):
    path("fast")
    with pytest.raises(ValueError, match="TRIKERN_CPU_LINEAR='fast'"), torch.no_grad():
        cpu_linear.linear(torch.randn(1, 4).bfloat16(), torch.randn(4, 4).bfloat16(), Holder())


@pytest.mark.parametrize("name", ["packed", "wide"])
def test_copies_follow_in_place_changes(name, path):
    path(name)
    w = torch.randn(32, 16).bfloat16()
    x = torch.randn(3, 16).bfloat16()
    h = Holder()
    with torch.no_grad():
        first = cpu_linear.linear(x, w, h)
        lay = h._cpu_layouts
        assert torch.equal(cpu_linear.linear(x, w, h), first) and h._cpu_layouts is lay  # reused
        w.mul_(2)
        within_an_ulp(cpu_linear.linear(x, w, h), x, w)
        assert h._cpu_layouts is not lay


def test_autograd_and_other_dtypes_take_f_linear():
    w = torch.randn(8, 4, requires_grad=True)
    x = torch.randn(2, 4)
    h = Holder()
    y = cpu_linear.linear(x, w, h)
    y.sum().backward()
    assert w.grad is not None and not hasattr(h, "_cpu_layouts")
    with torch.no_grad():
        cpu_linear.linear(x.double(), w.detach().double(), h)
        assert not hasattr(h, "_cpu_layouts")
        cpu_linear.linear(x.bfloat16(), w.detach().bfloat16(), h)
    assert hasattr(h, "_cpu_layouts")


def test_fp32_big_weights_choose_between_plain_and_transposed(monkeypatch):
    """No wide copy past MAX_WIDE_BYTES, but an fp32 weight's transposed product needs none: it is timed."""
    monkeypatch.delenv("TRIKERN_CPU_LINEAR", raising=False)
    monkeypatch.setattr(cpu_linear, "_choices", {})
    monkeypatch.setattr(cpu_linear, "MAX_WIDE_BYTES", 1024)
    timed = []
    real = cpu_linear._measure
    monkeypatch.setattr(cpu_linear, "_measure", lambda x, lay: timed.append(lay.wide) or real(x, lay))
    w, x = torch.randn(40, 32), torch.randn(4, 32)
    with torch.no_grad():
        within_fp32_rounding(cpu_linear.linear(x, w, Holder()), x, w)
    assert timed == [None] and set(cpu_linear._choices.values()) <= {"plain", "transposed"}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("name", ["packed", "wide", "transposed"])
def test_model_decodes_the_same_tokens_with_and_without(name, dtype, path, monkeypatch):
    from decode_helpers import run

    path(name)
    m = random_model(tiny_config(), seed=2, dtype=dtype, backend="cpu")
    on, _, _ = run(m, [1, 2, 3], "spec-linear", max_new_tokens=12, block_size=4)
    assert any("_cpu_layouts" in mod.__dict__ for mod in m.modules())
    monkeypatch.setattr(cpu_linear, "enabled", False)
    off, _, _ = run(m, [1, 2, 3], "spec-linear", max_new_tokens=12, block_size=4)
    assert on == off


def test_the_backend_picks_the_product_once():
    from trikern.kernels import linear_for

    assert linear_for("auto") is linear_for("cpu") is cpu_linear.linear
    assert linear_for("torch") is linear_for("triton") is not cpu_linear.linear
    for backend in ("auto", "cpu", "torch"):
        m = random_model(tiny_config(), backend=backend)
        products = {mod.product for mod in m.modules() if isinstance(mod, Linear)}
        assert products == {linear_for(backend)} and m.product is linear_for(backend)
