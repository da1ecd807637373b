"""Checkpoint loading: layouts, dtypes, every bad-input error, and the draft LoRA adapter."""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from synth import (checkpoint_tensors, lora_key, write_json, write_llama_checkpoint, write_lora,
                   write_nld_checkpoint, write_safetensors, write_weights)
from trikern.config import ModelConfig
from trikern.kernels import CAUSAL
from trikern.cpu_features import default_dtype
from trikern.loading import CheckpointError, load_lora, load_model
from util import nld_config_dict, random_model

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def reference(seed=0, **overrides):
    """The fp32 weights the synth builders write for the NLD config with `overrides`."""
    return random_model(ModelConfig.from_dict(nld_config_dict(**overrides)), seed=seed)


def assert_weights(model, ref, dtype):
    got, want = model.state_dict(), ref.state_dict()
    assert got.keys() == want.keys()
    for name, t in want.items():
        assert got[name].dtype == dtype, name
        assert torch.equal(got[name], t.to(dtype)), name


def broken(tmp_path, edit, shards=1):
    """An NLD checkpoint whose {name: tensor} dict went through `edit` before being written."""
    write_json(tmp_path / "config.json", nld_config_dict())
    tensors = checkpoint_tensors(reference())
    edit(tensors)
    write_weights(tmp_path, tensors, shards)
    return tmp_path


def tokens(n=12):
    return torch.randint(0, 160, (n,), generator=torch.Generator().manual_seed(3)), torch.arange(n)


# -- layouts and dtypes ------------------------------------------------------------------------------
def test_nld_checkpoint_has_the_real_tensor_names(tmp_path):
    folder = write_nld_checkpoint(tmp_path)
    names = set(load_file(folder / "model.safetensors"))
    per_layer = [f"self_attn.{p}_proj" for p in "qkvo"] + [f"mlp.{p}_proj" for p in ("gate", "up", "down")] + [
        "input_layernorm", "post_attention_layernorm"]
    want = {f"encoder.layers.{i}.{p}.weight" for i in range(2) for p in per_layer}
    want |= {"encoder.embed_tokens.weight", "encoder.norm.weight", "diffusion_head.weight"}
    assert names == want and len(names) == 9 * 2 + 3


def test_single_file_loads_exact_weights_as_bf16_on_cpu(tmp_path):
    folder = write_nld_checkpoint(tmp_path)
    model = load_model(folder, device="cpu", dtype="bf16")
    assert_weights(model, reference(), torch.bfloat16)
    # Without a dtype: bf16 where the CPU computes in it, else fp32 (cpu_features.py).
    assert load_model(folder, device="cpu").embed_tokens.weight.dtype == default_dtype()[0]
    assert model.cfg.tri_mode and not model.training
    assert all(not p.requires_grad for p in model.parameters())
    assert model.inv_freq.device.type == "cpu" and model.inv_freq.dtype == torch.float32
    assert torch.equal(model.inv_freq, reference().inv_freq)


def test_default_device(tmp_path):
    model = load_model(write_nld_checkpoint(tmp_path))
    want = "cuda" if torch.cuda.is_available() else "cpu"
    assert model.embed_tokens.weight.device.type == want


@pytest.mark.parametrize("shards", [2, 3, 21])
def test_sharded_equals_single_file(tmp_path, shards):
    folder = write_nld_checkpoint(tmp_path, shards=shards, dtype=torch.float32)
    files = sorted(p.name for p in folder.glob("*.safetensors"))
    assert len(files) == shards and not (folder / "model.safetensors").exists()
    assert_weights(load_model(folder, device="cpu", dtype=torch.float32), reference(), torch.float32)


@pytest.mark.parametrize("disk", ["bf16", "fp16", "fp32"])
@pytest.mark.parametrize("target", ["bf16", "fp32"])
def test_disk_dtype_converted_to_target(tmp_path, disk, target):
    folder = write_nld_checkpoint(tmp_path, dtype=DTYPES[disk])
    model = load_model(folder, device="cpu", dtype=target)
    ref = reference().to(DTYPES[disk])  # what the file holds
    assert_weights(model, ref, DTYPES[target])


def test_llama_layout_untied_and_tied(tmp_path):
    untied = load_model(write_llama_checkpoint(tmp_path / "u"), device="cpu", dtype=torch.float32)
    tied = load_model(write_llama_checkpoint(tmp_path / "t", tied=True), device="cpu", dtype=torch.float32)
    assert untied.lm_head is not None and tied.lm_head is None
    assert tied.head_weight() is tied.embed_tokens.weight


def test_ignores_redundant_tensors_hf_exports_carry(tmp_path):
    """A tied checkpoint that repeats the head and old exports' rotary tables still load."""
    folder = write_llama_checkpoint(tmp_path, tied=True, dtype=torch.float32)
    t = load_file(folder / "model.safetensors")
    t["lm_head.weight"] = t["model.embed_tokens.weight"]
    t["model.layers.0.self_attn.rotary_emb.inv_freq"] = torch.ones(12)
    write_safetensors(folder / "model.safetensors", t)
    model = load_model(folder, device="cpu", dtype=torch.float32)
    assert model.lm_head is None


def test_fp16_on_cpu_refused_with_advice(tmp_path):
    folder = write_nld_checkpoint(tmp_path)
    with pytest.raises(ValueError, match=r"float16 on CPU.*bfloat16"):
        load_model(folder, device="cpu", dtype=torch.float16)
    with pytest.raises(ValueError, match=r"float16 on CPU"):
        load_model(folder, device="cpu", dtype="fp16")


@pytest.mark.parametrize("dtype", ["int8", torch.int8, torch.float64])
def test_bad_target_dtype(tmp_path, dtype):
    with pytest.raises(ValueError, match="dtype"):
        load_model(write_nld_checkpoint(tmp_path), device="cpu", dtype=dtype)


def test_progress_bar_only_when_asked_or_big(tmp_path, capfd):
    folder = write_nld_checkpoint(tmp_path)
    load_model(folder, device="cpu")
    assert "loading" not in capfd.readouterr().err
    load_model(folder, device="cpu", progress=True)
    assert f"loading {folder.name}" in capfd.readouterr().err


# -- bad checkpoints: one CheckpointError naming file and tensor --------------------------------------
def test_missing_tensor(tmp_path):
    folder = broken(tmp_path, lambda t: t.pop("encoder.layers.1.mlp.up_proj.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing.*'encoder\.layers\.1\.mlp\.up_proj\.weight'"):
        load_model(folder, device="cpu")


def test_missing_head(tmp_path):
    folder = broken(tmp_path, lambda t: t.pop("diffusion_head.weight"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*missing.*'diffusion_head\.weight'"):
        load_model(folder, device="cpu")


def test_unexpected_tensor(tmp_path):
    folder = broken(tmp_path, lambda t: t.update({"encoder.layers.0.self_attn.q_norm.weight": torch.ones(32)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*unexpected.*'encoder\.layers\.0\.self_attn\.q_norm\.weight'"):
        load_model(folder, device="cpu")


def test_llama_names_in_nld_config_are_unexpected(tmp_path):
    def rename(t):
        for k in list(t):
            t[k.replace("encoder.", "model.").replace("diffusion_head", "lm_head")] = t.pop(k)
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) 'diffusion_head\.weight'"):
        load_model(broken(tmp_path, rename), device="cpu")


def test_misshaped_tensor(tmp_path):
    folder = broken(tmp_path, lambda t: t.update({"encoder.layers.0.self_attn.k_proj.weight": torch.zeros(32, 64)}))
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*'encoder\.layers\.0\.self_attn\.k_proj\.weight'"
                                              r".*shape \[32, 64\], expected \[64, 64\]"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize("dtype,disk", [(torch.int8, "I8"), (torch.float8_e4m3fn, "F8_E4M3"), (torch.float64, "F64")])
def test_unsupported_disk_dtype(tmp_path, dtype, disk):
    name = "encoder.layers.1.mlp.down_proj.weight"
    folder = broken(tmp_path, lambda t: t.update({name: t[name].float().to(dtype)}))
    with pytest.raises(CheckpointError, match=rf"model\.safetensors.*'{name}'.*stored as {disk}"):
        load_model(folder, device="cpu")


@pytest.mark.parametrize("damage", ["truncate", "garbage", "empty"])
def test_corrupt_file(tmp_path, damage):
    folder = write_nld_checkpoint(tmp_path)
    f = folder / "model.safetensors"
    data = f.read_bytes()
    f.write_bytes({"truncate": data[:-100], "garbage": b"\x07not a safetensors file" * 9, "empty": b""}[damage])
    with pytest.raises(CheckpointError, match=r"model\.safetensors.*truncated or corrupt"):
        load_model(folder, device="cpu")


def test_truncated_shard(tmp_path):
    folder = write_nld_checkpoint(tmp_path, shards=3)
    shard = folder / "model-00002-of-00003.safetensors"
    shard.write_bytes(shard.read_bytes()[:-10])
    with pytest.raises(CheckpointError, match=r"model-00002-of-00003\.safetensors.*truncated or corrupt"):
        load_model(folder, device="cpu")


def test_index_names_missing_shard(tmp_path):
    folder = write_nld_checkpoint(tmp_path, shards=3)
    (folder / "model-00003-of-00003.safetensors").unlink()
    with pytest.raises(CheckpointError, match=r"index\.json.*'model-00003-of-00003\.safetensors'.*'encoder\..*does not exist"):
        load_model(folder, device="cpu")


def test_index_lists_tensor_its_shard_lacks(tmp_path):
    folder = write_nld_checkpoint(tmp_path, shards=2)
    index = json.loads((folder / "model.safetensors.index.json").read_text())
    index["weight_map"]["encoder.norm.weight"] = "model-00001-of-00002.safetensors"
    write_json(folder / "model.safetensors.index.json", index)
    with pytest.raises(CheckpointError, match=r"model-00001-of-00002\.safetensors.*missing tensor 'encoder\.norm\.weight'"):
        load_model(folder, device="cpu")


def test_index_without_weight_map(tmp_path):
    folder = write_nld_checkpoint(tmp_path, shards=2)
    write_json(folder / "model.safetensors.index.json", {"metadata": {}})
    with pytest.raises(CheckpointError, match=r"index\.json.*weight_map"):
        load_model(folder, device="cpu")


def test_no_weights_file(tmp_path):
    write_json(tmp_path / "config.json", nld_config_dict())
    (tmp_path / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(CheckpointError, match=rf"{tmp_path.name}: no weights file.*pytorch_model\.bin"):
        load_model(tmp_path, device="cpu")


def test_missing_folder_and_config(tmp_path):
    with pytest.raises(CheckpointError, match="nowhere.*not found"):
        load_model(tmp_path / "nowhere", device="cpu")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"config\.json"):
        load_model(tmp_path / "empty", device="cpu")


# -- draft LoRA ----------------------------------------------------------------------------------------
def lora_checkpoint(tmp_path, **kw):
    folder = write_nld_checkpoint(tmp_path, dtype=torch.float32)
    write_lora(folder / "linear_spec_lora", reference().cfg, **kw)
    return folder


def test_lora_applied_only_on_lora_passes(tmp_path):
    folder = lora_checkpoint(tmp_path, r=4, alpha=16)
    model = load_model(folder, device="cpu", dtype=torch.float32)  # lora=None: found and loaded
    assert all(layer.self_attn.lora is not None for layer in model.layers)
    ids, pos = tokens()
    plain = model(ids, pos, None, CAUSAL)
    drafted = model(ids, pos, None, CAUSAL, lora=True)
    assert not torch.allclose(plain, drafted, atol=1e-2)
    # Manual computation: fold scale * B @ A into o_proj of a LoRA-free copy.
    merged = load_model(folder, device="cpu", dtype=torch.float32, lora=False)
    assert all(layer.self_attn.lora is None for layer in merged.layers)
    torch.testing.assert_close(merged(ids, pos, None, CAUSAL), plain, atol=0, rtol=0)
    ad = load_file(folder / "linear_spec_lora" / "adapter_model.safetensors")
    for i, layer in enumerate(merged.layers):
        a, b = ad[lora_key("encoder", i, "A")], ad[lora_key("encoder", i, "B")]
        layer.self_attn.o_proj.weight += (16 / 4) * b @ a
    torch.testing.assert_close(merged(ids, pos, None, CAUSAL), drafted, atol=1e-4, rtol=1e-5)


def test_write_nld_checkpoint_with_lora(tmp_path):
    model = load_model(write_nld_checkpoint(tmp_path, lora=True), device="cpu", lora=True)
    assert model.layers[0].self_attn.lora[0].dtype == model.embed_tokens.weight.dtype == default_dtype()[0]


def test_lora_adapter_name_infix_and_explicit_path(tmp_path):
    folder = write_nld_checkpoint(tmp_path / "ckpt", dtype=torch.float32)
    cfg = reference().cfg
    plain = load_model(folder, device="cpu", dtype=torch.float32, lora=write_lora(tmp_path / "a", cfg))
    infix = load_model(folder, device="cpu", dtype=torch.float32,
                       lora=write_lora(tmp_path / "b", cfg, adapter="default"))
    for p, q in zip(plain.layers, infix.layers):
        assert torch.equal(p.self_attn.lora[0], q.self_attn.lora[0])
        assert torch.equal(p.self_attn.lora[1], q.self_attn.lora[1])
        assert p.self_attn.lora[2] == q.self_attn.lora[2] == 16 / 4


def test_lora_rslora_scale(tmp_path):
    model = load_model(lora_checkpoint(tmp_path, r=4, alpha=16, config_overrides={"use_rslora": True}),
                       device="cpu", dtype=torch.float32)
    assert model.layers[1].self_attn.lora[2] == pytest.approx(16 / 2)


def test_lora_on_llama_layout(tmp_path):
    folder = write_llama_checkpoint(tmp_path / "ckpt", dtype=torch.float32)
    model = load_model(folder, device="cpu", dtype=torch.float32, lora=False)
    load_lora(model, write_lora(tmp_path / "lora", model.cfg))
    assert model.layers[0].self_attn.lora[0].shape == (4, 4 * 24)


def test_lora_true_without_folder(tmp_path):
    with pytest.raises(CheckpointError, match=r"linear_spec_lora.*not found"):
        load_model(write_nld_checkpoint(tmp_path), device="cpu", lora=True)


@pytest.mark.parametrize("targets,bad", [(["q_proj", "o_proj"], "q_proj"), (["o_proj", "down_proj"], "down_proj"),
                                         ("all-linear", "q_proj"), (r".*\.(q|o)_proj", "q_proj")])
def test_lora_targeting_other_modules_refused(tmp_path, targets, bad):
    folder = lora_checkpoint(tmp_path, config_overrides={"target_modules": targets})
    with pytest.raises(CheckpointError, match=rf"adapter_config\.json.*{bad}.*o_proj only"):
        load_model(folder, device="cpu", dtype=torch.float32)


def test_lora_unexpected_tensor(tmp_path):
    folder = lora_checkpoint(tmp_path)
    f = folder / "linear_spec_lora" / "adapter_model.safetensors"
    t = load_file(f)
    t["base_model.model.encoder.layers.0.self_attn.q_proj.lora_A.weight"] = torch.zeros(4, 64)
    write_safetensors(f, t)
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors.*'base_model\.model\.encoder\.layers\.0\.self_attn\.q_proj\.lora_A\.weight'"):
        load_model(folder, device="cpu", dtype=torch.float32)


def test_lora_missing_half(tmp_path):
    folder = lora_checkpoint(tmp_path)
    f = folder / "linear_spec_lora" / "adapter_model.safetensors"
    t = load_file(f)
    del t[lora_key("encoder", 1, "B")]
    write_safetensors(f, t)
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors.*missing.*layers\.1\.self_attn\.o_proj.*lora_B"):
        load_model(folder, device="cpu", dtype=torch.float32)


def test_lora_misshaped_and_rank_mismatch(tmp_path):
    folder = lora_checkpoint(tmp_path, r=4)
    f = folder / "linear_spec_lora" / "adapter_model.safetensors"
    t = load_file(f)
    t[lora_key("encoder", 0, "B")] = torch.zeros(64, 3)
    write_safetensors(f, t)
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors.*layers\.0\.self_attn\.o_proj.*mis-shaped"):
        load_model(folder, device="cpu", dtype=torch.float32)
    write_lora(folder / "linear_spec_lora", reference().cfg, r=4, config_overrides={"r": 8})
    with pytest.raises(CheckpointError, match=r"rank of layers\.0\.self_attn\.o_proj is 4.*r=8"):
        load_model(folder, device="cpu", dtype=torch.float32)


def test_lora_corrupt_adapter_file(tmp_path):
    folder = lora_checkpoint(tmp_path)
    f = folder / "linear_spec_lora" / "adapter_model.safetensors"
    f.write_bytes(f.read_bytes()[:-8])
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors.*truncated or corrupt"):
        load_model(folder, device="cpu", dtype=torch.float32)


def test_lora_layers_to_transform(tmp_path):
    folder = lora_checkpoint(tmp_path, config_overrides={"layers_to_transform": [1]})
    with pytest.raises(CheckpointError, match=r"adapter_model\.safetensors.*layer 0.*layers_to_transform"):
        load_model(folder, device="cpu", dtype=torch.float32)
    f = folder / "linear_spec_lora" / "adapter_model.safetensors"
    t = load_file(f)
    del t[lora_key("encoder", 0, "A")], t[lora_key("encoder", 0, "B")]
    write_safetensors(f, t)
    model = load_model(folder, device="cpu", dtype=torch.float32)
    assert model.layers[0].self_attn.lora is None and model.layers[1].self_attn.lora is not None
