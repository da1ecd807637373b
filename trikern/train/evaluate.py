"""Evaluate a tri-mode checkpoint on held-out Python files and write docs/EVAL.md.

  python -m trikern.train.evaluate [--model trikern/assets/default] [--out docs/EVAL.md]

Held-out files are the trainer's split (a hash of each path, `--heldout-percent` as in training),
never trained on. Reports:
- AR perplexity: next-token NLL over the whole held-out token stream in non-overlapping windows
  of the training length;
- per decoding mode, greedy, on the first `--prompts` held-out files (in a fixed hash order) with at
  least `--prompt-tokens` tokens: the prompt is the file's first tokens (after <|endoftext|>, as
  in training), `--new-tokens` are generated with no EOS stop. Tokens per forward counts
  generated tokens over forwards after the prefill; acceptance lengths are tokens produced per
  step as each decoder records them; tokens/s is decode time only, on this machine.
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import time
from collections import Counter
from pathlib import Path

import torch
from tokenizers import Tokenizer

from .. import files
from ..decode import decode
from ..decode import STEP_MODES, GenerationConfig, new_context
from ..loading import load_model
from . import data as D
from .distill import causal_nll

DEFAULT_MODEL = Path(__file__).resolve().parents[1] / "assets" / "default"


def heldout_prompts(tok: Tokenizer, files: list[D.SourceFile], count: int, length: int) -> list[tuple[str, list[int]]]:
    ordered = sorted(files, key=lambda f: D.heldout_order(f.rel))
    out = []
    for f in ordered:
        ids = tok.encode(f.text).ids  # the post-processor puts <|endoftext|> first
        if len(ids) >= length:
            out.append((f.rel, ids[:length]))
        if len(out) == count:
            break
    if len(out) < count:
        raise ValueError(f"only {len(out)} held-out files have {length} tokens; asked for {count} prompts")
    return out


def perplexity(model, tok: Tokenizer, files: list[D.SourceFile], seq_len: int, batch: int = 16) -> tuple[float, int]:
    eot = tok.token_to_id("<|endoftext|>")
    stream = D.encode_stream(tok, files, eot).long()
    n = stream.numel() // seq_len
    windows = stream[: n * seq_len].view(n, seq_len)
    total, count = 0.0, 0
    for i in range(0, n, batch):
        nll, c = causal_nll(model, windows[i:i + batch])
        total, count = total + nll, count + c
    return float(torch.exp(torch.tensor(total / count))), count


def run_mode(model, prompts, mode: str, gen: GenerationConfig) -> dict:
    agg = Counter()
    hist: Counter = Counter()
    outputs = []
    for _, ids in prompts:
        ctx = new_context(model, gen, len(ids), mode)
        out = [t for piece in decode(ctx, torch.tensor(ids), mode) for t in piece]
        s = ctx.stats
        agg["generated"] += s.generated_tokens
        agg["forwards"] += s.forwards
        agg["prefill_forwards"] += s.prefill_forwards
        agg["decode_s"] += s.decode_s
        hist.update(s.acceptance_lengths)
        outputs.append(out)
    steps = sum(hist.values())
    return {
        "mode": mode,
        "generated": agg["generated"],
        "forwards": agg["forwards"],
        "tokens_per_forward": agg["generated"] / agg["forwards"] if agg["forwards"] else 0.0,
        "mean_acceptance": sum(k * c for k, c in hist.items()) / steps if steps else None,
        "histogram": {int(k): c for k, c in sorted(hist.items())},
        "tokens_per_s": agg["generated"] / agg["decode_s"] if agg["decode_s"] else 0.0,
        "outputs": outputs,
    }


def distinct_ngram_ratio(seqs: list[list[int]], n: int = 4) -> float:
    """Mean over sequences of distinct n-grams / n-grams: 1 = no repeats, near 0 = a loop."""
    ratios = []
    for s in seqs:
        grams = [tuple(s[i:i + n]) for i in range(len(s) - n + 1)]
        if grams:
            ratios.append(len(set(grams)) / len(grams))
    return sum(ratios) / len(ratios) if ratios else 0.0


def render(report: dict) -> str:
    r = report
    lines = [
        "# Evaluation of the embedded model",
        "",
        "Written by `trikern/train/evaluate.py`; do not edit by hand. Reproduce with:",
        "",
        "```",
        r["command"],
        "```",
        "",
        f"- model: `{r['model']}`: {r['params_m']:.2f}M parameters, {r['layers']} layers, width {r['hidden']}, "
        f"vocab {r['vocab']}, trained {r['trained_steps']} steps (training block {r['train_block']}, "
        f"windows of {r['train_seq_len']} tokens); evaluated in {r['dtype']} on CPU",
        f"- held-out data: {r['heldout_files']} whole files of the Python {r['python']} standard library "
        f"never trained on ({r['ppl_tokens']} tokens)",
        f"- prompts: the first {r['prompt_tokens']} tokens of {r['prompts']} held-out files (fixed hash order); "
        f"{r['new_tokens']} new tokens each, greedy, no EOS stop, block {r['block']}, diffusion threshold "
        f"{r['threshold']}",
        "- tokens/forward = generated tokens / forwards after the prefill (prefill not counted); acceptance "
        "length = tokens produced per decoding step; tokens/s = decode time only, "
        f"{r['threads']} torch thread(s) on {r['cpu']} (shared machine, load average {r['load']:.1f}: "
        "treat speeds as rough)",
        "",
        f"**AR perplexity on held-out code: {r['perplexity']:.2f}** (next-token, windows of {r['train_seq_len']})",
        "",
        "| mode | tokens / forward | mean acceptance length | tokens/s | output = AR greedy |",
        "|---|---|---|---|---|",
    ]
    for m in r["modes"]:
        acc = "—" if m["mean_acceptance"] is None else f"{m['mean_acceptance']:.2f}"
        lines.append(f"| {m['mode']} | {m['tokens_per_forward']:.2f} | {acc} | {m['tokens_per_s']:.1f} | "
                     f"{m['matches_ar']}/{r['prompts']} |")
    lines += ["", "Output = AR greedy: the speculative modes are lossless at greedy in exact arithmetic; in "
              "low precision a near-tie between two logits can resolve differently in a wide verify pass than in "
              "the one-token AR pass (`--dtype fp32` checks this). Diffusion is not lossless.",
              "", "Acceptance-length histograms (tokens per step: steps):", ""]
    for m in r["modes"]:
        if m["histogram"]:
            lines.append(f"- {m['mode']}: " + ", ".join(f"{k}: {c}" for k, c in m["histogram"].items()))
    lines += ["", f"Repetition: distinct 4-gram ratio of the AR greedy continuations = {r['distinct4']:.2f} "
              "(1 = no repeated 4-gram). A small model's greedy text falls into loops, and a loop is easy to "
              "draft, so part of the speculation gain above comes from repetitive output.", "",
              f"Sample (prompt `{r['sample_file']}`, AR greedy continuation after ⟨generated:⟩):", "",
              "```", r["sample_prompt"].rstrip("\n")[-300:] + "⟨generated:⟩" + r["sample_output"], "```", "",
              "Goals (issue 5, greedy, held-out code, block 8): spec-quadratic >= 1.5 and spec-linear >= 1.2 "
              "tokens per forward. Training: see docs/TRAINING.md.", ""]
    return "\n".join(lines)


def _display_path(p: Path) -> str:
    try:
        return str(p.resolve().relative_to(Path.cwd()))
    except ValueError:
        return str(p)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trikern.train.evaluate", description=__doc__.split("\n\n")[0])
    p.add_argument("--model", type=Path, default=DEFAULT_MODEL)
    p.add_argument("--out", type=Path, default=Path("docs/EVAL.md"))
    p.add_argument("--json", type=Path, default=None, help="also write the raw figures here")
    p.add_argument("--prompts", type=int, default=12)
    p.add_argument("--prompt-tokens", type=int, default=64)
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--threshold", type=float, default=0.9)
    p.add_argument("--dtype", default="bf16", choices=["bf16", "fp32"])
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--data-root", default=None, help="the training data folder (default: the stdlib)")
    p.add_argument("--heldout-percent", type=float, default=3.0)
    p.add_argument("--skip-perplexity", action="store_true", help="quick check: decoding figures only")
    a = p.parse_args(argv)
    torch.set_num_threads(a.threads)
    tok_path = a.model / "tokenizer.json"
    if not tok_path.is_file():
        print(f"error: {tok_path} not found", file=sys.stderr)
        return 2
    tok = Tokenizer.from_file(str(tok_path))
    model = load_model(a.model, device="cpu", dtype=a.dtype)
    cfg = model.cfg
    _, held = D.read_split(a.data_root, a.heldout_percent)
    seq_len = int(cfg.raw.get("train_seq_len", 128))
    t0 = time.time()
    ppl, ppl_tokens = (float("nan"), 0) if a.skip_perplexity else perplexity(model, tok, held, seq_len)
    print(f"perplexity {ppl:.3f} over {ppl_tokens} tokens ({time.time() - t0:.0f}s)", flush=True)
    prompts = heldout_prompts(tok, held, a.prompts, a.prompt_tokens)
    gen = GenerationConfig(max_new_tokens=a.new_tokens, temperature=0.0, block_size=a.block_size,
                           threshold=a.threshold, stop_token_ids=())
    modes = []
    for mode in STEP_MODES:
        t0 = time.time()
        res = run_mode(model, prompts, mode, gen)
        modes.append(res)
        print(f"{mode}: {res['tokens_per_forward']:.3f} tokens/forward, {res['tokens_per_s']:.1f} tok/s "
              f"({time.time() - t0:.0f}s)", flush=True)
    ar = modes[0]["outputs"]
    for m in modes:
        m["matches_ar"] = sum(o == r for o, r in zip(m["outputs"], ar))
    cmd = "python -m trikern.train.evaluate " + " ".join(argv if argv is not None else sys.argv[1:])
    report = {
        "command": cmd.strip(), "model": _display_path(a.model), "params_m": sum(t.numel() for t in model.parameters()) / 1e6,
        "layers": cfg.num_hidden_layers, "hidden": cfg.hidden_size, "vocab": cfg.vocab_size,
        "trained_steps": cfg.raw.get("trained_steps", "?"), "train_block": cfg.raw.get("train_block_size", "?"),
        "train_seq_len": seq_len, "dtype": a.dtype, "heldout_files": len(held), "python": platform.python_version(),
        "ppl_tokens": ppl_tokens, "perplexity": ppl, "prompts": a.prompts, "prompt_tokens": a.prompt_tokens,
        "new_tokens": a.new_tokens, "block": a.block_size, "threshold": a.threshold, "threads": a.threads,
        "cpu": platform.processor() or platform.machine(), "load": os.getloadavg()[0],
        "modes": [{k: v for k, v in m.items() if k != "outputs"} for m in modes],
        "prompt_files": [f for f, _ in prompts],
        "distinct4": distinct_ngram_ratio(ar),
        "sample_file": prompts[0][0], "sample_prompt": tok.decode(prompts[0][1]), "sample_output": tok.decode(ar[0]),
    }
    files.write_text(a.out, render(report))
    if a.json:
        files.write_json(a.json, report, indent=2)
    print(f"wrote {a.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
