"""The table of `trikern selfcheck`: bench/synthetic.py's forward rows at the shape's caches and widths.

Random weights of the shape on the device (backend "triton": the GPU's kernels, or the interpreter's
with tiny shapes; layers fused where `trikern.load` fuses them: bench/synthetic.py `as_loaded`), the
read ceiling measured once, then per cache length and width T: ms per forward (a CUDA graph's
replay where one is captured), GB/s, % of the measured ceiling, kernels per forward and per layer,
and the path the autotuner chose. The check fails on what the bench itself reports as
broken: a graph that did not capture, or kernel counts that do not split evenly into layers.
"""
from __future__ import annotations

import sys

from ..bench import report, synthetic

COLUMNS = [("context", "cache"), ("T", "T"), ("ms", "ms/forward"), ("gb_per_s", "GB/s"),
           ("pct_measured", "% of read ceiling"), ("kernels", "kernels/fwd"), ("kernels_per_layer", "kernels/layer"),
           ("path", "tuned path")]


def path_text(row: dict) -> str:
    """The path the tuner chose for each op that had torch's own path among its candidates (the
    fused and quantized linears on CUDA: "triton" or "torch"), "-" when no op had that choice."""
    return ", ".join(f"{op}={p}" for op, p in sorted(row.get("paths", {}).items())) or "-"


def run(ctx) -> tuple[bool, str, dict]:
    from ..config import ModelConfig  # noqa: PLC0415
    from ..devices import device_name  # noqa: PLC0415

    s, device, log = ctx.shapes, ctx.device, ctx.log or sys.stderr
    raw = dict(s.raw(), eos_token_id=None)
    cfg = ModelConfig.from_dict(raw, f"selfcheck {s.name}")
    name = device_name(device)
    sheet = synthetic.datasheet_gbs(name) if device.type == "cuda" else None
    measured = synthetic.measure_read_gbs(device)
    # as trikern.load leaves a model (fused layers where it fuses them), so the table is what users run
    model = synthetic.as_loaded(synthetic.random_model(cfg, device, s.dtype, "triton", ctx.seed))
    other = synthetic.as_loaded(synthetic.random_model(
        ModelConfig.from_dict({**raw, "num_hidden_layers": 1}, "layer-count model"), device, s.dtype, "triton",
        ctx.seed))
    rows = []
    for context in s.caches:
        rows += synthetic.forward_rows(model, s.widths, context, device, s.reps, graphs=True, seed=ctx.seed,
                                       measured=measured, sheet=sheet, other=other, warmup=s.warmup, log=log)
    del model, other
    for r in rows:
        r["ms"] = r["graph_ms"] or r["eager_ms"]
        r["path"] = path_text(r)
    counted = synthetic.counted_by(device, "triton")
    text = "\n".join([f"{s.name} ({cfg.num_hidden_layers} layers, width {cfg.hidden_size}, {s.dtype}) on {name}: "
                      f"read ceiling {measured:.1f} GB/s measured, datasheet {report.fmt(sheet)} GB/s",
                      report.table(rows, COLUMNS), f"kernels: {counted}"])
    print(text, file=log, flush=True)
    problems = [f"T={r['T']} cache {r['context']}: {r['graph_error']}" for r in rows if r.get("graph_error")]
    problems += [f"T={r['T']} cache {r['context']}: {r['kernels']} kernels do not split evenly into layers"
                 for r in rows if not r.get("kernels_split_exact", True)]
    per_layer = sorted({r["kernels_per_layer"] for r in rows})
    detail = (f"{len(rows)} rows; kernels/layer {', '.join(f'{x:g}' for x in per_layer)}; "
              f"best {max(r.get('pct_measured') or 0 for r in rows):.0f}% of the read ceiling") \
        if not problems else "; ".join(problems[:3])
    keep = ("context", "T", "eager_ms", "graph_ms", "ms", "bytes", "gb_per_s", "pct_measured", "pct_datasheet",
            "kernels", "triton_launches", "torch_ops", "kernels_per_layer", "kernels_non_layer", "kernels_by_name",
            "autotune", "paths", "path", "graph_error")
    return not problems, detail, {"table": text, "measured_gb_per_s": measured, "datasheet_gb_per_s": sheet,
                                  "kernels_counted": counted, "device_name": name,
                                  "rows": [{k: r[k] for k in keep if k in r} for r in rows]}
