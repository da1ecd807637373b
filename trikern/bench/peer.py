"""`--peer hf`: Hugging Face `transformers` greedy generation on the same checkpoint, dtype and device.

Llama / Mistral / Ministral checkpoints load with `AutoModelForCausalLM`. An NLD checkpoint is the
Ministral-3 text decoder under other tensor names (`encoder.*`, `diffusion_head.weight`), so it is
built as `Ministral3ForCausalLM` (or `LlamaForCausalLM` when its RoPE has no llama-4 query scaling,
which HF's Ministral-3 requires) on the meta device and its tensors are assigned renamed, without
a second copy of the weights.

Timing follows trikern's stats: tokens/s = generated tokens / time after the first token (the
prefill and its token are the prefill phase), measured with a streamer that HF calls once with
the prompt and once per new token.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import torch

from . import report

WARMUP_TOKENS = 8


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
        m = tf.AutoModelForCausalLM.from_pretrained(path, dtype=dtype, attn_implementation="eager")
        return m.to(device).eval(), type(m).__name__
    kw = {k: v for k, v in d.items() if k not in ("model_type", "architectures")}
    rope = {**(d.get("rope_scaling") or {}), **(d.get("rope_parameters") or {})}
    if rope.get("llama_4_scaling_beta") is not None:
        conf, cls = tf.Ministral3Config(**kw), tf.Ministral3ForCausalLM
    else:
        conf, cls = tf.LlamaConfig(**kw), tf.LlamaForCausalLM
    conf._attn_implementation = "eager"
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


def run(tmodel, prompts, ids: list[list[int]], max_new_tokens: int, ar_records: list[dict],
        log=None) -> tuple[dict, list[dict]]:
    """(peer summary, per-prompt records); `ar_records` are trikern's AR greedy generations."""
    device = tmodel.model.embed_tokens.weight.device
    dtype = tmodel.model.embed_tokens.weight.dtype
    t0 = time.perf_counter()
    hf, cls = load_hf(Path(tmodel.path), dtype, device)
    tf = _transformers()
    eos = list(tmodel._eos_ids())
    limit = tmodel.cfg.max_position_embeddings

    def generate(x: list[int], n: int):
        clock = _Clock()
        inp = torch.tensor([x], device=device)
        with torch.inference_mode():
            out = hf.generate(inp, attention_mask=torch.ones_like(inp), max_new_tokens=n, do_sample=False,
                              eos_token_id=eos or None, pad_token_id=eos[0] if eos else 0, streamer=clock)
        return out[0, len(x):].tolist(), clock.times

    report.reset_peak_memory(device)
    generate(ids[0], min(WARMUP_TOKENS, max_new_tokens))
    ours = {r["prompt_id"]: r["token_ids"] for r in ar_records if r["repeat"] == 0}
    recs, gen, dec, ptok, pre = [], 0, 0.0, 0, 0.0
    for p, x in zip(prompts, ids):
        toks, times = generate(x, min(max_new_tokens, limit - len(x)))
        d = times[-1] - times[1] if len(times) > 2 else 0.0
        gen, dec, ptok, pre = gen + len(toks), dec + d, ptok + len(x), pre + (times[1] - times[0])
        mine = ours.get(p.id)
        first_diff = next((i for i, (a, b) in enumerate(zip(toks, mine)) if a != b), None) if mine else None
        if mine is not None and first_diff is None and len(toks) != len(mine):
            first_diff = min(len(toks), len(mine))
        recs.append({"prompt_id": p.id, "kind": p.kind, "token_ids": toks, "agree": mine == toks,
                     "first_difference": first_diff})
    tps = gen / dec if dec > 0 else 0.0
    summary = {"peer": "hf", "transformers": tf.__version__, "hf_class": cls, "generated_tokens": gen,
               "tokens_per_second": tps, "prefill_tokens_per_second": ptok / pre if pre > 0 else 0.0,
               "peak_memory_mb": report.peak_memory_mb(device),
               "tokens_agree": f"{sum(r['agree'] for r in recs)}/{len(recs)}", "ratio": None,
               "wall_s": round(time.perf_counter() - t0, 3)}
    print(f"[bench] hf transformers: {gen} tokens, {tps:.1f} tok/s ({summary['wall_s']:.1f} s)",
          file=log or sys.stderr, flush=True)
    return summary, recs
