"""Synthetic checkpoints on disk for tests: real config keys and tensor names, tiny random weights.

- `write_nld_checkpoint(dir, ...)`: NLD layout (`encoder.*`, `diffusion_head.weight`), config from
  the published 3B config.json scaled down (tests/util.py `nld_config_dict`), optional draft LoRA.
- `write_llama_checkpoint(dir, family=...)`: Llama / Mistral / Ministral / Ministral3 layout
  (`model.*`, `lm_head.weight` unless tied) with a config.json HF transformers can load.
- `write_lora(folder, cfg, ...)`: a PEFT LoRA adapter folder on o_proj.
- `write_weights(dir, tensors, shards)`: any {name: tensor} as model.safetensors or as shards +
  model.safetensors.index.json (for tests that build their own broken checkpoints).

Every builder returns the folder as a Path; weights come from `util.random_model` with `seed`, so
the same config and seed always give the same tensors. Files are written atomically.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import save_file

from trikern import files
from trikern.config import ModelConfig
from util import nld_config_dict, random_model

HF_CLASSES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "ministral": "MinistralForCausalLM",
    "ministral3": "Ministral3ForCausalLM",
}


# -- low-level writers ---------------------------------------------------------------------------
def _atomic(path: Path, write):
    """Run write(tmp_path) on a temp file beside `path`, then move it into place."""
    with files.atomic_path(path) as tmp:
        write(str(tmp))


def write_json(path, obj) -> Path:
    path = Path(path)
    _atomic(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))
    return path


def write_safetensors(path, tensors: dict) -> Path:
    path = Path(path)
    # save_file refuses shared or non-contiguous storage: give each tensor its own.
    own = {k: v.detach().contiguous().clone() for k, v in tensors.items()}
    _atomic(path, lambda tmp: save_file(own, tmp))
    return path


def write_weights(folder, tensors: dict, shards: int = 1) -> Path:
    """`model.safetensors`, or `shards` files model-0000i-of-0000n.safetensors plus the index."""
    folder = Path(folder)
    if shards <= 1:
        write_safetensors(folder / "model.safetensors", tensors)
        return folder
    names = list(tensors)
    per = -(-len(names) // shards)
    weight_map, total = {}, 0
    for s in range(shards):
        fname = f"model-{s + 1:05d}-of-{shards:05d}.safetensors"
        part = {n: tensors[n] for n in names[s * per:(s + 1) * per]}
        write_safetensors(folder / fname, part)
        for n, t in part.items():
            weight_map[n] = fname
            total += t.numel() * t.element_size()
    write_json(folder / "model.safetensors.index.json", {"metadata": {"total_size": total}, "weight_map": weight_map})
    return folder


def checkpoint_tensors(model, dtype=torch.bfloat16) -> dict:
    """The model's parameters under the checkpoint's names (prefix + head name), cast to dtype; the
    fused qkv / gate-up weights as the checkpoint's separate q/k/v_proj and gate/up_proj tensors."""
    cfg = model.cfg
    out = {}
    for name, p in model.checkpoint_state().items():
        key = cfg.head_name if name == "lm_head.weight" else f"{cfg.prefix}.{name}"
        out[key] = p.to(dtype)
    return out


# -- whole checkpoints ---------------------------------------------------------------------------
def write_nld_checkpoint(folder, cfg_overrides=None, dtype=torch.bfloat16, shards: int = 1, seed: int = 0,
                         lora: bool = False) -> Path:
    """A tiny NLD checkpoint (config.json + weights [+ linear_spec_lora/]) in `folder`."""
    folder = Path(folder)
    d = nld_config_dict(**(cfg_overrides or {}))
    write_json(folder / "config.json", d)
    model = random_model(ModelConfig.from_dict(d), seed=seed)
    write_weights(folder, checkpoint_tensors(model, dtype), shards)
    if lora:
        write_lora(folder / "linear_spec_lora", model.cfg, seed=seed + 1)
    return folder


def llama_config_dict(family: str = "llama", tied: bool = False, rope: str = "default", **overrides) -> dict:
    """A tiny HF config.json for `family` (llama | mistral | ministral | ministral3).

    rope: "default", or "llama3" (Llama 3.1 style `rope_scaling`, old key layout), or "yarn"
    (Ministral-3 / NLD style `rope_parameters` with llama-4 query scaling). The original context of
    scaled ropes is tiny (64) so short prompts cross every frequency band and scaling boundary.
    """
    if family not in HF_CLASSES:
        raise ValueError(f"family={family!r}: expected one of {', '.join(HF_CLASSES)}")
    d = dict(
        architectures=[HF_CLASSES[family]], model_type=family, hidden_size=64, intermediate_size=96,
        num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2, head_dim=24, vocab_size=160,
        rms_norm_eps=1e-5, max_position_embeddings=512, tie_word_embeddings=tied, bos_token_id=1,
        eos_token_id=2, hidden_act="silu", attention_bias=False, mlp_bias=False, attention_dropout=0.0,
    )
    if family in ("mistral", "ministral3"):
        d["sliding_window"] = None  # trikern attends to the whole context
    elif family == "ministral":
        # HF's Ministral needs a window; one as long as the context (as Ministral-8B ships) is full attention.
        d["sliding_window"] = d["max_position_embeddings"]
    if rope == "default":
        d["rope_theta"] = 10000.0
    elif rope == "llama3":
        d["rope_theta"] = 10000.0
        d["rope_scaling"] = dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=64)
    elif rope == "yarn":
        d["rope_parameters"] = dict(rope_type="yarn", rope_theta=100.0, factor=16.0, beta_fast=32.0,
                                    beta_slow=1.0, mscale=1.0, mscale_all_dim=1.0,
                                    original_max_position_embeddings=64, llama_4_scaling_beta=0.1)
        d["max_position_embeddings"] = 64 * 16  # consistent with the factor (HF warns otherwise)
    else:
        raise ValueError(f"rope={rope!r}: expected default, llama3 or yarn")
    d.update(overrides)
    return d


def write_llama_checkpoint(folder, family: str = "llama", tied: bool = False, rope: str = "default",
                           cfg_overrides=None, dtype=torch.bfloat16, shards: int = 1, seed: int = 0) -> Path:
    """A tiny AR checkpoint in HF layout (`model.*`, `lm_head.weight` unless tied)."""
    folder = Path(folder)
    d = llama_config_dict(family, tied, rope, **(cfg_overrides or {}))
    write_json(folder / "config.json", d)
    model = random_model(ModelConfig.from_dict(d), seed=seed)
    write_weights(folder, checkpoint_tensors(model, dtype), shards)
    return folder


def lora_key(prefix: str, layer: int, ab: str, adapter: str | None = None) -> str:
    """PEFT's tensor name for o_proj's lora_A / lora_B (adapter name infix optional)."""
    infix = f".{adapter}" if adapter else ""
    return f"base_model.model.{prefix}.layers.{layer}.self_attn.o_proj.lora_{ab}{infix}.weight"


def write_lora(folder, cfg: ModelConfig, r: int = 4, alpha: float = 16, seed: int = 1, dtype=torch.float32,
               adapter: str | None = None, config_overrides=None) -> Path:
    """A PEFT LoRA adapter folder on every layer's o_proj; weights random (B non-zero, so it acts)."""
    folder = Path(folder)
    acfg = dict(peft_type="LORA", r=r, lora_alpha=alpha, target_modules=["o_proj"], use_rslora=False,
                bias="none", lora_dropout=0.0, fan_in_fan_out=False, task_type=None, inference_mode=True,
                base_model_name_or_path=None, layers_to_transform=None)
    acfg.update(config_overrides or {})
    write_json(folder / "adapter_config.json", acfg)
    g = torch.Generator().manual_seed(seed)
    width = cfg.num_attention_heads * cfg.head_dim
    tensors = {}
    for i in range(cfg.num_hidden_layers):
        tensors[lora_key(cfg.prefix, i, "A", adapter)] = (0.2 * torch.randn(r, width, generator=g)).to(dtype)
        tensors[lora_key(cfg.prefix, i, "B", adapter)] = (0.2 * torch.randn(cfg.hidden_size, r, generator=g)).to(dtype)
    write_safetensors(folder / "adapter_model.safetensors", tensors)
    return folder


# -- a chat-capable checkpoint (weights + trained byte-level BPE + ChatML template) ---------------
CHAT_SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>", "<|mask|>"]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m.role }}\n{{ m.content }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n"
    "{% if enable_thinking is defined and enable_thinking %}<think>\n{% endif %}{% endif %}"
)
_CORPUS = [
    "def add(a, b):\n    return a + b\n", "Hello, world! Ça va? 中文 😀 ünïcödé",
    "for i in range(10):\n    print(i)\n", "The quick brown fox jumps over the lazy dog.",
] * 4


def write_chat_checkpoint(folder, vocab_size: int = 320, seed: int = 0, **cfg_overrides) -> Path:
    """A tiny NLD checkpoint whose tokenizer.json really encodes text: special tokens take ids
    0..5 (mask = 5, eos = <|im_end|> = 2 and <|endoftext|> = 0)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    folder = Path(folder)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=CHAT_SPECIALS, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(_CORPUS, trainer=trainer)
    _atomic(folder / "tokenizer.json", tok.save)
    write_json(folder / "tokenizer_config.json", {
        "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": None, "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>", "chat_template": CHATML})
    overrides = dict(vocab_size=vocab_size, mask_token_id=5, eos_token_id=[2, 0], bos_token_id=None)
    overrides.update(cfg_overrides)
    return write_nld_checkpoint(folder, overrides, dtype=torch.float32, seed=seed)
