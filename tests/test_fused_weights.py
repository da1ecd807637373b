"""Fused q/k/v and gate/up weights: the model holds one matmul each, checkpoints keep HF's tensors.

The fused forward is checked against a plain unfused computation over the checkpoint's own
tensors; export splits the fused weights back into bit-identical HF tensors; and every loading
error still names the checkpoint's tensor, never the fused parameter.
"""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from tokenizers import Tokenizer

import trikern
from synth import checkpoint_tensors, write_json, write_nld_checkpoint, write_weights
from trikern.kernels import CAUSAL
from trikern.kernels.rope import rope_ref
from trikern.loading import CheckpointError, load_model
from trikern.train.export import export
from util import nld_config_dict, random_model, tiny_config

EMBEDDED = Path(trikern.__file__).parent / "assets" / "default"


def _rmsnorm(x, w, eps):
    return x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * w


def unfused_logits(model, t, ids):
    """Causal logits from the checkpoint tensors `t` (HF names), one matmul per HF projection.
    Only RoPE is borrowed from the model: the weights' layout is what is under test."""
    cfg = model.cfg
    Hq, Hkv, D, N = cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, ids.shape[0]
    w = lambda name: t[f"{cfg.prefix}.{name}"]  # noqa: E731
    x = w("embed_tokens.weight")[ids]
    for i in range(cfg.num_hidden_layers):
        p = f"layers.{i}."
        h = _rmsnorm(x, w(p + "input_layernorm.weight"), cfg.rms_norm_eps)
        q = (h @ w(p + "self_attn.q_proj.weight").T).view(N, Hq, D)
        k = (h @ w(p + "self_attn.k_proj.weight").T).view(N, Hkv, D)
        v = (h @ w(p + "self_attn.v_proj.weight").T).view(N, Hkv, D)
        q, k = rope_ref(q, k, torch.arange(N), *model._rope_args())
        k, v = (z.repeat_interleave(Hq // Hkv, dim=1).transpose(0, 1) for z in (k, v))
        o = F.scaled_dot_product_attention(q.transpose(0, 1), k, v, is_causal=True, scale=model.scale)
        x = x + o.transpose(0, 1).reshape(N, -1) @ w(p + "self_attn.o_proj.weight").T
        h = _rmsnorm(x, w(p + "post_attention_layernorm.weight"), cfg.rms_norm_eps)
        g, u = h @ w(p + "mlp.gate_proj.weight").T, h @ w(p + "mlp.up_proj.weight").T
        x = x + (F.silu(g) * u) @ w(p + "mlp.down_proj.weight").T
    return _rmsnorm(x, w("norm.weight"), cfg.rms_norm_eps) @ t[cfg.head_name].T


# -- layout ----------------------------------------------------------------------------------------
def test_one_weight_per_fused_projection_and_pieces_are_views():
    cfg = tiny_config()
    m = random_model(cfg)
    modules = {n.split(".")[-2] for n, _ in m.named_parameters() if n.startswith("layers.0.")}
    assert modules == {"qkv_proj", "o_proj", "gate_up_proj", "down_proj", "input_layernorm",
                       "post_attention_layernorm"}
    at, mlp = m.layers[1].self_attn, m.layers[1].mlp
    Hq, Hkv, D, H, I = (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim, cfg.hidden_size,
                        cfg.intermediate_size)
    assert at.qkv_proj.weight.shape == ((Hq + 2 * Hkv) * D, H)
    assert mlp.gate_up_proj.weight.shape == (2 * I, H)
    st = m.checkpoint_state()
    # q, k, v are consecutive row blocks of the one storage, in that order.
    qkv = at.qkv_proj.weight
    starts = [st[f"layers.1.self_attn.{p}_proj.weight"].data_ptr() for p in "qkv"]
    assert starts == [qkv.data_ptr() + r * H * qkv.element_size() for r in (0, Hq * D, (Hq + Hkv) * D)]
    assert st["layers.1.mlp.up_proj.weight"].data_ptr() == mlp.gate_up_proj.weight[I:].data_ptr()
    assert st["layers.1.mlp.gate_proj.weight"].shape == (I, H)


def test_random_init_draws_per_checkpoint_tensor():
    """The pieces are filled in HF order, so q / k / v each got their own draw (not one spread)."""
    m = random_model(tiny_config(), seed=5)
    st = m.checkpoint_state()
    g = torch.Generator().manual_seed(5)
    want_embed = 0.2 * torch.randn(st["embed_tokens.weight"].shape, generator=g)
    want_q = 0.2 * torch.randn(st["layers.0.self_attn.q_proj.weight"].shape, generator=g)
    assert torch.equal(st["embed_tokens.weight"], want_embed)
    assert torch.equal(st["layers.0.self_attn.q_proj.weight"], want_q)


# -- forward ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_fused_forward_equals_unfused_reference(tmp_path, backend):
    folder = write_nld_checkpoint(tmp_path, dtype=torch.float32, cfg_overrides={"num_key_value_heads": 1})
    model = load_model(folder, device="cpu", dtype=torch.float32, backend=backend)
    t = load_file(folder / "model.safetensors")
    ids = torch.randint(0, model.cfg.vocab_size, (21,), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ours = model(ids, torch.arange(21), None, CAUSAL)
        want = unfused_logits(model, t, ids)
    assert want.abs().max() > 1, "logits too flat for the comparison to mean anything"
    tol = 2e-5 if backend == "torch" else 1e-4  # triton: the interpreter's fp32 exp / rsqrt
    torch.testing.assert_close(ours, want, atol=tol, rtol=tol)


# -- export and load -------------------------------------------------------------------------------
def test_export_then_load_round_trips_bit_identical_with_hf_names(tmp_path):
    first = load_model(EMBEDDED, device="cpu", lora=False)
    export(first, Tokenizer.from_file(str(EMBEDDED / "tokenizer.json")), tmp_path)
    written, original = load_file(tmp_path / "model.safetensors"), load_file(EMBEDDED / "model.safetensors")
    assert written.keys() == original.keys()
    assert "encoder.layers.5.self_attn.k_proj.weight" in written and "encoder.layers.0.mlp.up_proj.weight" in written
    assert not any("qkv" in n or "gate_up" in n for n in written)
    for name, t in original.items():
        assert written[name].dtype == t.dtype and torch.equal(written[name], t), name
    again = load_model(tmp_path, device="cpu", lora=False)
    a, b = first.state_dict(), again.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name


@pytest.mark.parametrize("disk,target", [(torch.float16, torch.bfloat16), (torch.float32, torch.float32)])
def test_pieces_in_separate_shards_fill_one_fused_weight(tmp_path, disk, target):
    """Every tensor in its own shard: a fused weight is assembled across files, converted per piece."""
    folder = write_nld_checkpoint(tmp_path, dtype=disk, shards=21)
    model = load_model(folder, device="cpu", dtype=target)
    ref = random_model(tiny_config(), seed=0)
    qkv = model.layers[0].self_attn.qkv_proj.weight
    assert qkv.is_contiguous() and qkv.dtype == target
    for name, t in ref.checkpoint_state().items():
        assert torch.equal(model.checkpoint_state()[name], t.to(disk).to(target)), name


# -- errors name the checkpoint's tensors ----------------------------------------------------------
def _broken(tmp_path, edit, shards=1):
    write_json(tmp_path / "config.json", nld_config_dict())
    tensors = checkpoint_tensors(random_model(tiny_config()))
    edit(tensors)
    write_weights(tmp_path, tensors, shards)
    return tmp_path


@pytest.mark.parametrize("shards", [1, 3])
def test_misshaped_k_proj_named_by_its_checkpoint_name(tmp_path, shards):
    # k_proj [64, 64] on disk; 128 rows would still fit inside qkv_proj, so this is the piece's own check.
    name = "encoder.layers.1.self_attn.k_proj.weight"
    folder = _broken(tmp_path, lambda t: t.update({name: torch.zeros(128, 64)}), shards)
    with pytest.raises(CheckpointError, match=rf"safetensors: tensor '{name}' has shape \[128, 64\], "
                                              r"expected \[64, 64\]") as e:
        load_model(folder, device="cpu")
    assert "qkv" not in str(e.value)


def test_missing_v_proj_and_gate_proj_named(tmp_path):
    def drop(t):
        del t["encoder.layers.0.self_attn.v_proj.weight"], t["encoder.layers.1.mlp.gate_proj.weight"]
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) 'encoder\.layers\.0\.self_attn\.v_proj\.weight', "
                                              r"'encoder\.layers\.1\.mlp\.gate_proj\.weight'"):
        load_model(_broken(tmp_path, drop), device="cpu")


def test_a_fused_tensor_in_a_checkpoint_is_unexpected(tmp_path):
    """Checkpoints carry HF's separate tensors; a pre-fused one is not a layout trikern reads."""
    def add(t):
        p = "encoder.layers.0.self_attn."
        t[p + "qkv_proj.weight"] = torch.cat([t[p + "q_proj.weight"], t[p + "k_proj.weight"], t[p + "v_proj.weight"]])
    with pytest.raises(CheckpointError,
                       match=r"unexpected tensor\(s\) 'encoder\.layers\.0\.self_attn\.qkv_proj\.weight'"):
        load_model(_broken(tmp_path, add), device="cpu")
