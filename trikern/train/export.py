"""Write a trained model as a Hugging Face-layout tri-mode checkpoint folder.

config.json (model_type nemotron_labs_diffusion, mask / eos / bos ids, block_size),
model.safetensors (bf16, the real NLD names `encoder.*` and `diffusion_head.weight`),
tokenizer.json and tokenizer_config.json (ChatML-like template with a thinking mode).
Every file is written to a temporary name and moved into place.
"""
from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from .. import files
from .bpe import SPECIAL_TOKENS

# ChatML turns; `enable_thinking` opens a <think> section (True) or closes an empty one (False).
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' -}}"
    "{%- if message['role'] == 'assistant' and message.get('reasoning_content') -%}"
    "{{- '<think>\\n' + message['reasoning_content'] + '\\n</think>\\n\\n' -}}"
    "{%- endif -%}"
    "{{- message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}"
    "{{- '<|im_start|>assistant\\n' -}}"
    "{%- if enable_thinking is defined and enable_thinking is false -%}{{- '<think>\\n\\n</think>\\n\\n' -}}"
    "{%- elif enable_thinking is defined and enable_thinking -%}{{- '<think>\\n' -}}{%- endif -%}"
    "{%- endif -%}"
)


def checkpoint_tensors(model, dtype=torch.bfloat16) -> dict[str, torch.Tensor]:
    """Model parameters under their checkpoint names (prefix + name; the head as cfg.head_name).
    The fused qkv / gate-up weights are written as the separate HF tensors (q/k/v_proj, gate/up_proj)
    every HF loader expects; `clone` gives each row slice its own storage, as safetensors requires."""
    cfg = model.cfg
    out = {}
    for name, p in model.checkpoint_state().items():
        key = cfg.head_name if name == "lm_head.weight" else f"{cfg.prefix}.{name}"
        out[key] = p.detach().to(dtype).contiguous().clone()
    return out


def tokenizer_config(max_len: int) -> dict:
    return {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": "<|endoftext|>",
        "eos_token": "<|im_end|>",
        "pad_token": "<|endoftext|>",
        "mask_token": "<|mask|>",
        "additional_special_tokens": SPECIAL_TOKENS,
        "model_max_length": max_len,
        "clean_up_tokenization_spaces": False,
        "chat_template": CHAT_TEMPLATE,
    }


def export(model, tokenizer, out_dir: str | Path, extra_config: dict | None = None):
    """Write the folder `out_dir`; `tokenizer` is a `tokenizers.Tokenizer`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config = dict(model.cfg.raw)
    config.update(extra_config or {})
    tensors = checkpoint_tensors(model)
    with files.atomic_path(out / "model.safetensors") as tmp:
        save_file(tensors, tmp, metadata={"format": "pt"})
    files.write_text(out / "tokenizer.json", tokenizer.to_str())
    files.write_json(out / "tokenizer_config.json", tokenizer_config(int(config["max_position_embeddings"])), indent=2,
                     sort_keys=True)
    files.write_json(out / "config.json", config, indent=2, sort_keys=True)
    return out
