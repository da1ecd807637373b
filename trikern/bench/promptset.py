"""The prompt-set bench: every (mode, block size) over a prompt set on one loaded checkpoint.

Per (mode, block size) the rows add up all prompts and repeats before dividing (tokens/s = all
generated tokens / all decode time; tokens per forward = all tokens / all forwards), so a long
generation weighs more than a short one, as it does for a user. With repeats, "tok/s med" takes
each prompt's median over its repeats first (tokens and seconds), then adds up the prompts: a slow
spell of a shared machine that hits one repeat of one configuration does not move it. One short
warm-up generation per row runs first and is not counted (it pays for Triton compiles and
CUDA-graph captures on a GPU); then the rows take turns prompt by prompt.
"""
from __future__ import annotations

import statistics
import sys
import time
from collections import Counter
from dataclasses import dataclass

from ..decode import AUTO
from . import report

# Modes that run once per bench rather than once per block size: AR has no block, and auto picks
# its own block sizes up to a cap (the largest of --block-sizes).
BLOCKLESS = ("ar", AUTO)
WARMUP_TOKENS = 8


@dataclass
class Settings:
    modes: tuple[str, ...]
    block_sizes: tuple[int | None, ...]  # None: the checkpoint's block size
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    seed: int = 0
    threshold: float = 0.9
    repeats: int = 1
    cuda_graphs: bool | None = None  # None: the decoder's default (on when on CUDA)

    def configs(self) -> list[tuple[str, int | None]]:
        out = []
        for mode in self.modes:
            out += [(mode, once_block(mode, self.block_sizes))] if mode in BLOCKLESS else \
                [(mode, b) for b in self.block_sizes]
        return out


def once_block(mode: str, block_sizes) -> int | None:
    """The block size of a mode that runs once: none for ar, the cap for auto."""
    if mode == "ar" or None in block_sizes:
        return None
    return max(block_sizes)


def label(mode: str, block: int | None) -> str:
    if block is None:
        return mode
    return f"{mode} B<={block}" if mode == AUTO else f"{mode} B{block}"


def aggregate(stats: list[dict]) -> dict:
    """Totals over generations, then the ratios (see the module docstring)."""
    gen = sum(s["generated_tokens"] for s in stats)
    fwd = sum(s["forwards"] for s in stats)
    dec = sum(s["decode_s"] for s in stats)
    ptok = sum(s["prompt_tokens"] for s in stats)
    pre = sum(s["prefill_s"] for s in stats)
    hist = Counter()
    for s in stats:
        hist.update({int(k): v for k, v in s.get("acceptance_lengths", {}).items()})
    steps = sum(hist.values())
    strategies: dict[str, Counter] = {}
    for s in stats:
        for key, v in s.get("strategies", {}).items():
            strategies.setdefault(key, Counter()).update({k: v[k] for k in ("steps", "tokens", "forwards")})
    return {
        "generations": len(stats),
        "generated_tokens": gen,
        "forwards": fwd,
        "decode_s": round(dec, 6),
        "tokens_per_second": gen / dec if dec > 0 else 0.0,
        "tokens_per_forward": gen / fwd if fwd else None,
        "mean_acceptance_length": sum(k * c for k, c in hist.items()) / steps if steps else None,
        "acceptance_histogram": {k: hist[k] for k in sorted(hist)},
        "prefill_tokens_per_second": ptok / pre if pre > 0 else 0.0,
        "switches": sum(s.get("switches", 0) for s in stats),
        "strategies": {k: dict(v) for k, v in sorted(strategies.items())},
    }


def median_rate(gens) -> float:
    """Tokens/s from (prompt id, generated tokens, decode seconds) triples: per prompt the median
    over its repeats, then all prompts' tokens over all their seconds."""
    by: dict[str, list] = {}
    for pid, tokens, seconds in gens:
        by.setdefault(pid, []).append((tokens, seconds))
    tok = sum(statistics.median(t for t, _ in g) for g in by.values())
    sec = sum(statistics.median(x for _, x in g) for g in by.values())
    return tok / sec if sec > 0 else 0.0


def _triples(recs):
    return [(r["prompt_id"], r["stats"]["generated_tokens"], r["stats"]["decode_s"]) for r in recs]


def run(model, prompts, ids: list[list[int]], s: Settings, log=None, peer=None
        ) -> tuple[list[dict], list[dict], list[dict]]:
    """(rows, per-generation records, the peer's generations) for every (mode, block size) of `s`.

    The configurations take turns prompt by prompt (not one configuration after another), and the
    peer (`peer.HFPeer`), when given, takes its turn with them, so a slow spell of a shared machine
    lands on all of them alike. Prefix reuse is off: every generation prefills its whole prompt, as
    the first request of a session does."""
    device = model.model.embed_tokens.weight.device
    configs = s.configs()
    kws = {c: dict(mode=c[0], block_size=c[1], temperature=s.temperature, top_p=s.top_p, threshold=s.threshold,
                   cuda_graphs=s.cuda_graphs, reuse_prefix=False) for c in configs}
    wall = dict.fromkeys(configs, 0.0)
    peak = dict.fromkeys(configs, 0.0)
    stats = {c: [] for c in configs}
    recs = {c: [] for c in configs}
    for c in configs:
        t0 = time.perf_counter()
        if c[0] == AUTO:
            # auto may run any of its candidates: warm each one's shapes (kernels tuned, CPU matmul
            # paths timed), as a fixed setting's warm-up does for its own, and as `trikern serve` does.
            model.warmup(block_size=c[1])
        model.generate(ids[0], max_new_tokens=min(WARMUP_TOKENS, s.max_new_tokens), seed=s.seed, **kws[c])
        wall[c] += time.perf_counter() - t0
    peer_gens = []
    if peer is not None:
        peer.generate(ids[0], min(WARMUP_TOKENS, s.max_new_tokens))
    for rep in range(s.repeats):
        for i, (p, x) in enumerate(zip(prompts, ids)):
            # A distinct seed per generation, fixed by (seed, repeat, prompt): reruns reproduce.
            seed = s.seed + 1000 * rep + i
            for c in configs:
                t0 = time.perf_counter()
                report.reset_peak_memory(device)
                r = model.generate(x, max_new_tokens=s.max_new_tokens, seed=seed, **kws[c])
                peak[c] = max(peak[c], report.peak_memory_mb(device))
                wall[c] += time.perf_counter() - t0
                stats[c].append(r.stats)
                recs[c].append({"mode": c[0], "block_size": c[1], "prompt_id": p.id, "kind": p.kind, "repeat": rep,
                                "seed": seed, "token_ids": r.token_ids, "text": r.text, "stats": r.stats})
            if peer is not None:
                report.reset_peak_memory(device)
                g = peer.generate(x, s.max_new_tokens)
                peer_gens.append({"prompt_id": p.id, "kind": p.kind, "repeat": rep, **g,
                                  "peak_memory_mb": report.peak_memory_mb(device)})
    rows, records = [], []
    for mode, block in configs:
        c = (mode, block)
        row = {"mode": mode, "block_size": block, "label": label(mode, block), "prompts": len(prompts),
               "repeats": s.repeats, **aggregate(stats[c]),
               "tokens_per_second_median": median_rate(_triples(recs[c])), "peak_memory_mb": peak[c],
               "by_kind": _by_kind(recs[c]), "equal_ar": None, "wall_s": round(wall[c], 3)}
        if mode != AUTO:
            row["switches"] = None  # only auto changes strategy
        rows.append(row)
        records += recs[c]
        print(f"[bench] {row['label']}: {row['generated_tokens']} tokens, {row['tokens_per_second']:.1f} tok/s, "
              f"{report.fmt(row['tokens_per_forward'])} tok/fwd ({row['wall_s']:.1f} s)",
              file=log or sys.stderr, flush=True)
    if s.temperature == 0:  # greedy: how many outputs equal AR's (lossless modes should, near-ties aside)
        ar = {r["prompt_id"]: r["token_ids"] for r in records if r["mode"] == "ar" and r["repeat"] == 0}
        for row in rows:
            if ar and row["mode"] != "ar":
                same = [r["token_ids"] == ar[r["prompt_id"]] for r in records
                        if (r["mode"], r["block_size"], r["repeat"]) == (row["mode"], row["block_size"], 0)]
                row["equal_ar"] = f"{sum(same)}/{len(same)}"
    return rows, records, peer_gens


def _by_kind(recs: list[dict]) -> dict:
    kinds: dict[str, list[dict]] = {}
    for r in recs:
        kinds.setdefault(r["kind"], []).append(r)
    out = {}
    for k, rs in sorted(kinds.items()):
        a = aggregate([r["stats"] for r in rs])
        out[k] = {"generated_tokens": a["generated_tokens"], "tokens_per_second": round(a["tokens_per_second"], 3),
                  "tokens_per_second_median": round(median_rate(_triples(rs)), 3),
                  "tokens_per_forward": a["tokens_per_forward"] and round(a["tokens_per_forward"], 4)}
    return out


COLUMNS = [("label", "mode"), ("tokens_per_second", "tok/s"), ("tokens_per_second_median", "tok/s med"),
           ("tokens_per_forward", "tok/fwd"),
           ("mean_acceptance_length", "accept"), ("prefill_tokens_per_second", "prefill tok/s"),
           ("generated_tokens", "tokens"), ("tok_s_ratio_vs_ar", "vs ar"), ("peak_memory_mb", "peak MB"),
           ("equal_ar", "=AR"), ("switches", "switches")]
CSV_COLUMNS = ["mode", "block_size", "prompts", "repeats", "generations", "generated_tokens", "forwards", "decode_s",
               "tokens_per_second", "tokens_per_second_median", "tokens_per_forward", "mean_acceptance_length",
               "acceptance_histogram", "switches", "strategies", "prefill_tokens_per_second", "peak_memory_mb",
               "equal_ar", "tokens_agree", "tok_s_ratio_vs_ar"]


def render(rows: list[dict], env: dict, peer: dict | None) -> str:
    head = (f"{env['device_name']} ({env['device']}, {env['dtype']}, {env['torch_threads']} torch threads), "
            f"torch {env['torch']}, triton {env['triton']}")
    lines = [head, report.table(rows, COLUMNS)]
    hists = [(r["label"], r["acceptance_histogram"]) for r in rows if r["acceptance_histogram"]]
    if hists:
        lines.append("acceptance length histograms (tokens per step: steps):")
        lines += [f"  {lab}: {report.histogram_text(h)}" for lab, h in hists]
    kinds = sorted({k for r in rows for k in r.get("by_kind", {})})
    if len(kinds) > 1:  # which mode wins depends on the text: show it per kind of prompt
        lines.append("tokens/s by prompt kind:")
        per = [{"label": r["label"], **{k: r["by_kind"][k]["tokens_per_second"] for k in r.get("by_kind", {})}}
               for r in rows if r.get("by_kind")]
        lines.append(report.table(per, [("label", "mode")] + [(k, k) for k in kinds]))
        if any(r.get("repeats", 1) > 1 for r in rows):
            lines.append("tokens/s by prompt kind, median over repeats:")
            per = [{"label": r["label"], **{k: r["by_kind"][k]["tokens_per_second_median"] for k in r["by_kind"]}}
                   for r in rows if r.get("by_kind")]
            lines.append(report.table(per, [("label", "mode")] + [(k, k) for k in kinds]))
    if peer is not None:
        lines.append(f"HF transformers {peer['transformers']} greedy ({peer['hf_class']}): "
                     f"{peer['tokens_per_second']:.1f} tok/s; trikern ar / hf = {report.fmt(peer['ratio'])}x "
                     f"(median over repeats: {peer['tokens_per_second_median']:.1f} tok/s, "
                     f"{report.fmt(peer['ratio_median'])}x); "
                     f"tokens agree on {peer['tokens_agree']} prompts")
    return "\n".join(lines)
