"""Shared plumbing for trikern's GPU benchmarks: CUDA check, environment facts, timing, roofline, CSV.

Every benchmark script:
    args = parse_args("what it measures")     # --csv PATH, --smoke
    env = require_cuda_or_exit(args)          # exits 0 with a message when there is no GPU
    ... time with `time_ms(fn, env)`, compute GB/s with `gbs(bytes, ms)` and `pct_roofline` ...
    write_csv(args.csv or default_csv("name", env), rows, env)

`--smoke` runs the script's code paths on CPU under the Triton interpreter with tiny shapes and a
wall-clock timer: the figures mean nothing, but it keeps the benchmark code from rotting on machines
without a GPU.
"""
from __future__ import annotations

import argparse
import csv
import io
import os
import platform
import re
import sys
import time
from pathlib import Path

from trikern import files  # stdlib only: triton is not imported yet (--smoke sets TRITON_INTERPRET)

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def parse_args(description: str, argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--csv", default=None, help="CSV file to append rows to (default: benchmarks/results/<bench>-<gpu>.csv)")
    p.add_argument("--smoke", action="store_true",
                   help="CPU + Triton interpreter, tiny shapes: checks the script runs, figures are meaningless")
    return p.parse_args(argv)


def require_cuda_or_exit(args) -> dict:
    """Environment facts for the CSV; without a GPU (and without --smoke) print why and exit 0."""
    if args.smoke:
        if os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            os.environ["TRITON_INTERPRET"] = "1"
            if "triton" in sys.modules:
                print("--smoke needs TRITON_INTERPRET=1 before triton is imported; set it and re-run",
                      file=sys.stderr)
                sys.exit(2)
        return environment("cpu")
    import torch
    if not torch.cuda.is_available() or os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
        print(f"{Path(sys.argv[0]).name}: skipped, no CUDA GPU (or TRITON_INTERPRET is set); nothing measured.")
        sys.exit(0)
    return environment("cuda")


def environment(device: str) -> dict:
    import torch
    import triton
    env = {"device": device, "torch": torch.__version__, "triton": triton.__version__,
           "python": platform.python_version(), "cuda": torch.version.cuda or "", "gpu": "cpu-interpreter",
           "sm": "", "peak_gbs": float("nan")}
    if device == "cuda":
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env.update(gpu=props.name, sm=f"{props.major}{props.minor}", peak_gbs=peak_bandwidth_gbs(props))
    return env


def peak_bandwidth_gbs(props) -> float:
    """DRAM bandwidth roofline in GB/s: TRIKERN_PEAK_GBS, else 2 x memory clock x bus width (DDR)."""
    override = os.environ.get("TRIKERN_PEAK_GBS")
    if override:
        return float(override)
    clock_khz = getattr(props, "memory_clock_rate", 0)
    bus_bits = getattr(props, "memory_bus_width", 0)
    if clock_khz and bus_bits:
        return 2 * clock_khz * 1e3 * bus_bits / 8 / 1e9
    return float("nan")


def time_ms(fn, env: dict) -> float:
    """Median milliseconds of fn(): triton's do_bench on CUDA, one wall-clock run under --smoke."""
    if env["device"] != "cuda":
        fn()
        t0 = time.perf_counter()
        fn()
        return (time.perf_counter() - t0) * 1e3
    import triton.testing
    return triton.testing.do_bench(fn, warmup=25, rep=100, return_mode="median")


def gbs(nbytes: int, ms: float) -> float:
    return nbytes / (ms * 1e-3) / 1e9


def pct_roofline(gb_s: float, env: dict) -> float:
    return 100.0 * gb_s / env["peak_gbs"] if env["peak_gbs"] == env["peak_gbs"] else float("nan")


def default_csv(bench: str, env: dict) -> Path:
    return RESULTS_DIR / f"{bench}-{re.sub(r'[^A-Za-z0-9.+-]+', '_', env['gpu']).strip('_')}.csv"


ENV_COLUMNS = ("gpu", "sm", "torch", "triton", "cuda", "python", "peak_gbs")


def write_csv(path, rows: list[dict], env: dict) -> Path:
    """Append rows (plus the environment columns) to a CSV, rewriting it atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    rows = [{**{k: env[k] for k in ENV_COLUMNS}, **r} for r in rows]
    fields = list(rows[0]) if rows else list(ENV_COLUMNS)
    old = []
    if path.exists():
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            if reader.fieldnames == fields:
                old = list(reader)
            else:
                print(f"{path}: columns changed, starting a new file", file=sys.stderr)
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=fields)
    w.writeheader()
    w.writerows(old + rows)
    return files.write_text(path, buf.getvalue())


def print_table(rows: list[dict], columns: list[str]) -> None:
    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else str(v)
    cells = [[fmt(r.get(c, "")) for c in columns] for r in rows]
    widths = [max(len(c), *(len(x[i]) for x in cells)) if cells else len(c) for i, c in enumerate(columns)]
    print("  ".join(c.rjust(w) for c, w in zip(columns, widths)))
    for x in cells:
        print("  ".join(v.rjust(w) for v, w in zip(x, widths)))
