"""`--peer hf`: Hugging Face `transformers` greedy generation on the same checkpoint, dtype and device.

Llama / Mistral / Ministral checkpoints load with `AutoModelForCausalLM`. An NLD checkpoint is the
Ministral-3 text decoder under other tensor names (`encoder.*`, `diffusion_head.weight`), so it is
built as `Ministral3ForCausalLM` (or `LlamaForCausalLM` when its RoPE has no llama-4 query scaling,
which HF's Ministral-3 requires) on the meta device and its tensors are assigned renamed, without
a second copy of the weights.

Timing follows trikern's stats: tokens/s = generated tokens / time after the first token (the
prefill and its token are the prefill phase), measured with a streamer that HF calls once with
the prompt and once per new token. The bench runs HF in turn with trikern's configurations,
prompt by prompt and repeat by repeat (promptset.run), so a slow spell of a shared machine lands
on both alike.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from .promptset import median_rate

# HF's default and its fastest here (the embedded model on this project's CPU: ~15% over "eager").
ATTENTION = "sdpa"


class PeerError(ValueError):
    """The peer cannot run (transformers missing, checkpoint it cannot represent)."""


def _transformers():
    try:
        import transformers  # noqa: PLC0415
    except ImportError:
        raise PeerError("--peer hf needs Hugging Face transformers: pip install transformers") from None
    transformers.logging.set_verbosity_error()  # generation-flag warnings would drown the table
    return transformers


def load_hf(path: Path, dtype: torch.dtype, device: torch.device):
    """(model, class name) of the checkpoint at `path` in transformers."""
    tf = _transformers()
    d = json.loads((path / "config.json").read_text())
    if d.get("model_type") != "nemotron_labs_diffusion":
        m = tf.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation=ATTENTION)
        return m.to(device).eval(), type(m).__name__
    kw = {k: v for k, v in d.items() if k not in ("model_type", "architectures")}
    rope = {**(d.get("rope_scaling") or {}), **(d.get("rope_parameters") or {})}
    if rope.get("llama_4_scaling_beta") is not None:
        conf, cls = tf.Ministral3Config(**kw), tf.Ministral3ForCausalLM
    else:
        conf, cls = tf.LlamaConfig(**kw), tf.LlamaForCausalLM
    conf._attn_implementation = ATTENTION
    with torch.device("meta"):
        m = cls(conf)
    m.load_state_dict(_renamed_tensors(path, dtype, device), strict=False, assign=True)
    if conf.tie_word_embeddings:
        m.lm_head.weight = m.model.embed_tokens.weight
    # Non-persistent buffers (RoPE tables) were built on meta: rebuild them where the weights are.
    m.model.rotary_emb = type(m.model.rotary_emb)(conf).to(device)
    left = [n for n, t in [*m.named_parameters(), *m.named_buffers()] if t.is_meta]
    if left:
        raise PeerError(f"--peer hf: {path} has no tensor for HF's {', '.join(left[:4])}")
    return m.eval(), cls.__name__


def _renamed_tensors(path: Path, dtype, device) -> dict:
    from safetensors import safe_open  # noqa: PLC0415

    from ..loading import _tensor_sources  # noqa: PLC0415 - the one reader of single / sharded layouts

    by_file: dict[Path, list[str]] = {}
    for name, f in _tensor_sources(path).items():
        by_file.setdefault(f, []).append(name)
    out = {}
    for f, names in by_file.items():
        with safe_open(str(f), "pt", device="cpu") as h:
            for name in names:
                if name == "diffusion_head.weight":
                    key = "lm_head.weight"
                elif name.startswith("encoder."):
                    key = "model." + name.removeprefix("encoder.")
                else:
                    continue
                out[key] = h.get_tensor(name).to(device=device, dtype=dtype)
    return out


class _Clock:
    """A transformers streamer that only records when each put arrives (prompt, then each token)."""

    def __init__(self):
        self.times: list[float] = []

    def put(self, value):  # generate() hands over CPU tensors, so the device work is already done
        self.times.append(time.perf_counter())

    def end(self):
        pass


class HFPeer:
    """HF greedy generation of trikern's checkpoint; the prompt-set bench (promptset.run) calls
    `generate` in turn with its own configurations, prompt by prompt, so both see the same machine."""

    label = "hf transformers"

    def __init__(self, tmodel):
        self.device = tmodel.model.embed_tokens.weight.device
        self.hf, self.cls = load_hf(Path(tmodel.path), tmodel.model.embed_tokens.weight.dtype, self.device)
        self.transformers = _transformers().__version__
        self.eos = list(tmodel._eos_ids())
        self.limit = tmodel.cfg.max_position_embeddings

    def generate(self, x: list[int], max_new_tokens: int) -> dict:
        """{'token_ids', 'prompt_tokens', 'prefill_s', 'decode_s'} of one greedy generation."""
        clock = _Clock()
        inp = torch.tensor([x], device=self.device)
        n = min(max_new_tokens, self.limit - len(x))
        with torch.inference_mode():
            out = self.hf.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=n, do_sample=False,
                                   eos_token_id=self.eos or None, pad_token_id=self.eos[0] if self.eos else 0,
                                   streamer=clock)
        t = clock.times
        return {"token_ids": out[0, len(x):].tolist(), "prompt_tokens": len(x), "prefill_s": t[1] - t[0],
                "decode_s": t[-1] - t[1] if len(t) > 2 else 0.0}


def summarize(peer: HFPeer, gens: list[dict], ar_records: list[dict]) -> tuple[dict, list[dict]]:
    """(peer summary, per-generation records) from `peer.generate` results tagged with prompt_id,
    kind and repeat; tokens are compared with trikern's AR greedy generation of the same prompt."""
    ours = {(r["prompt_id"], r["repeat"]): r["token_ids"] for r in ar_records}
    recs = []
    for g in gens:
        toks, mine = g["token_ids"], ours.get((g["prompt_id"], g["repeat"]))
        first_diff = next((i for i, (a, b) in enumerate(zip(toks, mine)) if a != b), None) if mine else None
        if mine is not None and first_diff is None and len(toks) != len(mine):
            first_diff = min(len(toks), len(mine))
        recs.append({**g, "agree": mine == toks, "first_difference": first_diff})
    gen = sum(len(g["token_ids"]) for g in gens)
    dec = sum(g["decode_s"] for g in gens)
    pre = sum(g["prefill_s"] for g in gens)
    first = [r for r in recs if r["repeat"] == 0]
    summary = {"peer": "hf", "transformers": peer.transformers, "hf_class": peer.cls, "generated_tokens": gen,
               "tokens_per_second": gen / dec if dec > 0 else 0.0,
               "tokens_per_second_median": median_rate([(g["prompt_id"], len(g["token_ids"]), g["decode_s"])
                                                        for g in gens]),
               "prefill_tokens_per_second": sum(g["prompt_tokens"] for g in gens) / pre if pre > 0 else 0.0,
               "peak_memory_mb": max((g["peak_memory_mb"] for g in gens), default=0.0),
               "tokens_agree": f"{sum(r['agree'] for r in first)}/{len(first)}", "ratio": None,
               "ratio_median": None}
    return summary, recs
