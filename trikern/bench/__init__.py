"""`trikern bench`: decoding speed over a prompt set, or a config's shape against the bandwidth roofline.

    trikern bench [--model PATH] [--modes ar,spec-linear] [--block-sizes 4,8,16] [--max-new-tokens N]
                  [--json F] [--csv F] [--plot F.png] [--peer hf]
    trikern bench --synthetic nld-8b [--layers N] [--context 1024] [--widths 1,8,32,72]
                  [--weights int4|fp8 [--group-size 128]] [--json F]

The prompt-set bench (promptset.py, run by `run_prompt_set`) runs every (mode, block size) over the
shipped held-out prompts (prompts.jsonl) or `--prompts FILE`; the synthetic bench (synthetic.py, run
by `run_synthetic`) builds random weights of a shipped NLD config (or any config.json) and measures
forwards and decode steps against the read bandwidth. Both take the command's checked options
(trikern/cli/bench.py, where every bad option is one `trikern bench: error: ...` line and exit 2,
raised before anything slow runs).
"""
from __future__ import annotations


class BenchError(ValueError):
    """A bad command line; printed as one error line."""


def run_synthetic(a) -> int:
    """The synthetic bench of checked options `a` (trikern/cli/bench.py): print the table, write --json."""
    from ..loading import resolve_device, resolve_dtype  # noqa: PLC0415
    from . import report, synthetic  # noqa: PLC0415

    device = resolve_device(a.device)
    dtype = resolve_dtype(a.dtype, device)
    res = synthetic.run(a, device, dtype)
    print(synthetic.render(res))
    if a.json:
        report.write_json(a.json, res)
    return 0


def run_prompt_set(a) -> int:
    """The prompt-set bench of checked options `a` (trikern/cli/bench.py): print the table, write
    --json / --csv / --plot. BenchError for a mode the checkpoint cannot decode."""
    import torch  # noqa: PLC0415

    from .. import load  # noqa: PLC0415
    from . import peer, promptset, report, synthetic  # noqa: PLC0415
    from .prompts import load_prompts  # noqa: PLC0415

    prompts = load_prompts(a.prompts, a.limit)
    if a.plot:
        report.check_plot_available()
    m = load(a.model, device=a.device, dtype=getattr(torch, a.dtype) if a.dtype else None, backend=a.backend,
             quantize=a.weights, group_size=a.group_size)
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
                     "parameters": synthetic.parameter_count(m.model)},
           "settings": {**vars(s), "prompts": a.prompts or "shipped", "prompt_ids": [p.id for p in prompts],
                        "backend": a.backend, "weights": a.weights, "group_size": a.group_size},
           "rows": rows, "peer": summary, "generations": records, "peer_generations": peer_recs}
    if a.json:
        report.write_json(a.json, out)
    if a.csv:
        report.write_csv(a.csv, rows, env, promptset.CSV_COLUMNS)
    if a.plot:
        title = f"trikern bench: {m.path.name}, {env['device_name']}, {env['dtype']}, {s.max_new_tokens} new tokens"
        report.plot(a.plot, rows, title)
    return 0
