"""`trikern bench`: decoding speed over a prompt set, or a config's shape against the bandwidth roofline.

    trikern bench [--model PATH] [--modes ar,spec-linear] [--block-sizes 4,8,16] [--max-new-tokens N]
                  [--json F] [--csv F] [--plot F.png] [--peer hf]
    trikern bench --synthetic nld-8b [--layers N] [--context 1024] [--widths 1,8,32,72] [--json F]

The prompt-set bench (promptset.py) runs every (mode, block size) over the shipped held-out
prompts (prompts.jsonl) or `--prompts FILE`; the synthetic bench (synthetic.py) builds random
weights of a shipped NLD config (or any config.json) and measures forwards and decode steps
against the read bandwidth. Every bad option is one `trikern bench: error: ...` line and exit 2,
raised before anything slow runs.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

DEFAULT_WIDTHS = (1, 8, 32, 72)  # AR, spec verify at B = 8 and 32, a quadratic step at B = 8
SYNTHETIC_ONLY = ("layers", "context", "widths", "reps", "decode_tokens")
PROMPTS_ONLY = ("model", "prompts", "limit", "max_new_tokens", "temperature", "top_p", "threshold", "repeats",
                "csv", "plot", "peer")


class BenchError(ValueError):
    """A bad command line; printed as one error line."""


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line and exit 2 from main(), not usage + SystemExit
        raise BenchError(message)


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="trikern bench", description=__doc__.split("\n\n")[0] + " Options marked [synthetic] "
                "need --synthetic; options marked [prompts] apply only without it.")
    p.add_argument("--model", metavar="PATH", help="[prompts] checkpoint folder (default: the embedded model)")
    p.add_argument("--device", default=None, help="cpu | cuda | cuda:N (default: cuda when available)")
    p.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"],
                   help="default: bfloat16 (on a CPU without native bf16: float32; see trikern --version)")
    p.add_argument("--backend", default="auto", choices=["auto", "triton", "torch"], help="kernels (default: auto)")
    p.add_argument("--modes", metavar="M1,M2", help="comma-separated decoding modes (default: all the checkpoint "
                   "supports); ar runs once whatever the block sizes")
    p.add_argument("--block-sizes", metavar="B1,B2", help="comma-separated block sizes (default: the "
                   "checkpoint's; 8 with --synthetic)")
    p.add_argument("--seed", type=int, default=0, help="RNG seed (sampling, random weights; default: 0)")
    p.add_argument("--threads", type=int, metavar="N", help="torch CPU threads (default: torch's; on a shared "
                   "machine 1 avoids threads spinning against other processes)")
    p.add_argument("--no-cuda-graphs", action="store_true", help="run every step eagerly on CUDA")
    p.add_argument("--json", metavar="FILE", help="write every figure, the settings and the environment as JSON")
    # prompt-set bench
    p.add_argument("--prompts", metavar="FILE", help="[prompts] JSONL prompt set (default: the shipped held-out set)")
    p.add_argument("--limit", type=int, metavar="N", help="[prompts] use only the first N prompts")
    p.add_argument("--max-new-tokens", type=int, metavar="N", help="[prompts] tokens per generation (default: 64)")
    p.add_argument("--temperature", type=float, metavar="T", help="[prompts] 0 = greedy (default)")
    p.add_argument("--top-p", type=float, metavar="P", help="[prompts] nucleus mass when sampling (default: 1)")
    p.add_argument("--threshold", type=float, help="[prompts] diffusion reveal confidence (default: 0.9)")
    p.add_argument("--repeats", type=int, metavar="R", help="[prompts] runs of the whole prompt set per row "
                   "(default: 1)")
    p.add_argument("--csv", metavar="FILE", help="[prompts] write one row per (mode, block size)")
    p.add_argument("--plot", metavar="FILE.png", help="[prompts] tokens/s and tokens per forward per mode "
                   "(needs matplotlib: pip install 'trikern[plot]')")
    p.add_argument("--peer", choices=["hf"], help="[prompts] also run Hugging Face transformers greedy on the same "
                   "checkpoint, dtype and device; report the tok/s ratio and whether tokens agree with trikern ar")
    # synthetic bench
    p.add_argument("--synthetic", metavar="NAME|CONFIG", help="random weights of a shipped config (nld-3b, nld-8b, "
                   "nld-14b) or of a config.json / checkpoint folder")
    p.add_argument("--layers", type=int, metavar="N", help="[synthetic] keep only N layers")
    p.add_argument("--context", type=int, metavar="N", help="[synthetic] cache length (default: 1024)")
    p.add_argument("--widths", metavar="T1,T2", help="[synthetic] forward chunk widths (default: 1,8,32,72)")
    p.add_argument("--reps", type=int, metavar="N", help="[synthetic] timed calls per figure (default: 20 on CUDA, "
                   "3 on CPU)")
    p.add_argument("--decode-tokens", type=int, metavar="N", help="[synthetic] tokens per decode row; 0 skips the "
                   "decode rows (default: 32)")
    return p


def parse_modes(text: str, all_modes) -> tuple[str, ...]:
    out = []
    for m in (x.strip() for x in text.split(",")):
        if m not in all_modes:
            raise BenchError(f"--modes: unknown mode {m!r} (expected a comma-separated list of {', '.join(all_modes)})")
        if m not in out:
            out.append(m)
    return tuple(out)


def parse_positive_ints(text: str, option: str) -> tuple[int, ...]:
    out = []
    for x in (x.strip() for x in text.split(",")):
        if not x.isdigit() or int(x) < 1:
            raise BenchError(f"{option}: {x!r} is not a positive integer (expected a comma-separated list like 4,8,16)")
        if int(x) not in out:
            out.append(int(x))
    return tuple(out)


def _check(a, all_modes):
    """Every option checked before a model loads; fills the defaults that depend on the bench kind."""
    given = lambda names: [n for n in names if getattr(a, n) is not None]  # noqa: E731
    opt = lambda n: "--" + n.replace("_", "-")  # noqa: E731
    if a.synthetic is None and given(SYNTHETIC_ONLY):
        raise BenchError(f"{opt(given(SYNTHETIC_ONLY)[0])} applies only with --synthetic")
    if a.synthetic is not None and given(PROMPTS_ONLY):
        raise BenchError(f"{opt(given(PROMPTS_ONLY)[0])} does not apply with --synthetic")
    for name in ("json", "csv", "plot"):  # an unwritable output should fail now, not after the measurement
        v = getattr(a, name)
        if v is not None and Path(v).is_dir():
            raise BenchError(f"--{name} {v}: is a folder; pass a file name")
    a.all_modes = tuple(all_modes)
    a.modes = parse_modes(a.modes, all_modes) if a.modes is not None else None
    a.block_sizes = parse_positive_ints(a.block_sizes, "--block-sizes") if a.block_sizes is not None else None
    for name, low in (("threads", 1), ("limit", 1), ("max_new_tokens", 1), ("repeats", 1), ("layers", 1),
                      ("context", 0),
                      ("reps", 1), ("decode_tokens", 0)):
        v = getattr(a, name)
        if v is not None and v < low:
            raise BenchError(f"{opt(name)} {v}: must be >= {low}")
    if a.synthetic is not None:
        a.widths = parse_positive_ints(a.widths, "--widths") if a.widths is not None else DEFAULT_WIDTHS
        a.context = 1024 if a.context is None else a.context
        a.decode_tokens = 32 if a.decode_tokens is None else a.decode_tokens
        a.block_sizes = a.block_sizes or (8,)
        return
    a.max_new_tokens = a.max_new_tokens or 64
    a.temperature = 0.0 if a.temperature is None else a.temperature
    a.top_p = 1.0 if a.top_p is None else a.top_p
    a.threshold = 0.9 if a.threshold is None else a.threshold
    a.repeats = a.repeats or 1
    if a.temperature < 0:
        raise BenchError(f"--temperature {a.temperature}: must be >= 0")
    if not 0 < a.top_p <= 1:
        raise BenchError(f"--top-p {a.top_p}: must be in (0, 1]")
    if not 0 <= a.threshold <= 1:
        raise BenchError(f"--threshold {a.threshold}: must be in [0, 1]")
    if a.peer and a.temperature > 0:
        raise BenchError("--peer hf compares greedy outputs: drop --temperature (or pass 0)")
    if a.peer and a.modes is not None and "ar" not in a.modes:
        a.modes = ("ar", *a.modes)  # the peer is compared with trikern's AR greedy


def main(argv=None) -> int:
    from ..decode.common import MODES  # noqa: PLC0415 - whatever modes the decoder offers, auto included

    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        a = build_parser().parse_args(argv)
        _check(a, MODES)
        if a.threads:
            import torch  # noqa: PLC0415
            torch.set_num_threads(a.threads)
        if a.synthetic is not None:
            return _synthetic(a)
        return _prompt_set(a)
    except SystemExit as e:  # --help
        return e.code if isinstance(e.code, int) else 0
    except (ValueError, OSError) as e:
        print(f"trikern bench: error: {e}", file=sys.stderr)
        return 2


def _synthetic(a) -> int:
    from ..loading import resolve_device, resolve_dtype  # noqa: PLC0415
    from . import report, synthetic  # noqa: PLC0415

    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    res = synthetic.run(a, device, dtype)
    print(synthetic.render(res))
    if a.json:
        report.write_json(a.json, res)
    return 0


def _prompt_set(a) -> int:
    import torch  # noqa: PLC0415

    from .. import load  # noqa: PLC0415
    from . import peer, promptset, report  # noqa: PLC0415
    from .prompts import load_prompts  # noqa: PLC0415

    prompts = load_prompts(a.prompts, a.limit)
    if a.plot:
        report.check_plot_available()
    m = load(a.model, device=a.device, dtype=getattr(torch, a.dtype) if a.dtype else None, backend=a.backend)
    modes = a.modes or (a.all_modes if m.cfg.tri_mode else ("ar",))
    bad = [x for x in modes if x != "ar" and not m.cfg.tri_mode]
    if bad:
        raise BenchError(f"--modes: {bad[0]} needs a tri-mode checkpoint; {m.cfg.model_type} decodes in mode ar only")
    ids = [p.token_ids(m) for p in prompts]
    s = promptset.Settings(modes=modes, block_sizes=a.block_sizes or (m.cfg.block_size,),
                           max_new_tokens=a.max_new_tokens, temperature=a.temperature, top_p=a.top_p, seed=a.seed,
                           threshold=a.threshold, repeats=a.repeats,
                           cuda_graphs=False if a.no_cuda_graphs else None)
    device = m.model.embed_tokens.weight.device
    env = report.environment(device, m.model.embed_tokens.weight.dtype)
    hf = peer.HFPeer(m) if a.peer else None
    rows, records, peer_gens = promptset.run(m, prompts, ids, s, peer=hf)
    ar = next((r for r in rows if r["mode"] == "ar"), None)
    summary, peer_recs = None, []
    if hf is not None:
        summary, peer_recs = peer.summarize(hf, peer_gens, [r for r in records if r["mode"] == "ar"])
        hf_tps = summary["tokens_per_second"]
        summary["ratio"] = ar["tokens_per_second"] / hf_tps if hf_tps else None
        hf_med = summary["tokens_per_second_median"]
        summary["ratio_median"] = ar["tokens_per_second_median"] / hf_med if hf_med else None
        rows.append({"mode": "hf", "block_size": None, "label": "hf transformers", "prompts": len(prompts),
                     "repeats": s.repeats, "generated_tokens": summary["generated_tokens"],
                     "tokens_per_second": summary["tokens_per_second"],
                     "tokens_per_second_median": summary["tokens_per_second_median"], "tokens_per_forward": None,
                     "acceptance_histogram": {}, "prefill_tokens_per_second": summary["prefill_tokens_per_second"],
                     "peak_memory_mb": summary["peak_memory_mb"], "equal_ar": summary["tokens_agree"],
                     "tokens_agree": summary["tokens_agree"]})
    ar_tps = ar["tokens_per_second"] if ar else 0.0
    for r in rows:
        r["tok_s_ratio_vs_ar"] = r["tokens_per_second"] / ar_tps if ar_tps else None
    print(promptset.render(rows, env, summary))
    cfg = m.cfg
    out = {"bench": "prompts", "env": env,
           "model": {"path": str(m.path), "model_type": cfg.model_type, "layers": cfg.num_hidden_layers,
                     "hidden_size": cfg.hidden_size, "vocab_size": cfg.vocab_size,
                     "parameters": sum(p.numel() for p in m.model.parameters())},
           "settings": {**vars(s), "prompts": a.prompts or "shipped", "prompt_ids": [p.id for p in prompts],
                        "backend": a.backend},
           "rows": rows, "peer": summary, "generations": records, "peer_generations": peer_recs}
    if a.json:
        report.write_json(a.json, out)
    if a.csv:
        report.write_csv(a.csv, rows, env, promptset.CSV_COLUMNS)
    if a.plot:
        title = f"trikern bench: {m.path.name}, {env['device_name']}, {env['dtype']}, {s.max_new_tokens} new tokens"
        report.plot(a.plot, rows, title)
    return 0
