"""Output of `trikern bench`: environment facts, the printed table, JSON, CSV and the plot."""
from __future__ import annotations

import csv
import io
import os
import platform
import resource
import sys
from pathlib import Path

import torch

from .. import files
from ..devices import device_name


class ReportError(ValueError):
    """An output option that cannot be honoured (e.g. --plot without matplotlib)."""


def environment(device: torch.device, dtype: torch.dtype) -> dict:
    import triton  # noqa: PLC0415

    env = {"device": str(device), "device_name": device_name(device), "dtype": str(dtype).removeprefix("torch."),
           "torch": torch.__version__, "triton": triton.__version__, "python": platform.python_version(),
           "torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count(),
           "peak_memory_kind": "cuda_max_memory_allocated" if device.type == "cuda" else "process_peak_rss"}
    if device.type == "cuda":
        p = torch.cuda.get_device_properties(device)
        env.update(cuda=torch.version.cuda, sm=f"{p.major}{p.minor}")
    if hasattr(os, "getloadavg"):  # speeds on a shared machine mean little without it
        env["load_average_1m"] = round(os.getloadavg()[0], 2)
    return env


# -- peak memory -------------------------------------------------------------------------------------
def reset_peak_memory(device: torch.device):
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mb(device: torch.device) -> float:
    """CUDA: peak allocated since the last reset. CPU: the process's peak RSS so far (it cannot be
    reset, so on CPU it only grows across rows)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


# -- printing -----------------------------------------------------------------------------------------
def fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        if v != v:
            return "-"
        return f"{v:.2f}" if abs(v) < 100 else f"{v:.0f}"
    return str(v)


def table(rows: list[dict], columns: list[tuple[str, str]]) -> str:
    """Right-aligned text table; `columns` are (key, header) pairs."""
    cells = [[fmt(r.get(k)) for k, _ in columns] for r in rows]
    widths = [max([len(h)] + [len(c[i]) for c in cells]) for i, (_, h) in enumerate(columns)]
    lines = ["  ".join(h.rjust(w) for (_, h), w in zip(columns, widths))]
    lines += ["  ".join(c.rjust(w) for c, w in zip(row, widths)) for row in cells]
    return "\n".join(lines)


def histogram_text(h: dict) -> str:
    return " ".join(f"{k}:{v}" for k, v in sorted(h.items(), key=lambda kv: int(kv[0])))


# -- files ---------------------------------------------------------------------------------------------
def write_json(path, obj):
    files.write_json(path, obj, indent=2, ensure_ascii=False)


def write_csv(path, rows: list[dict], env: dict, columns: list[str]):
    """One CSV row per result row, the environment repeated on each (rows from different runs can
    then be concatenated and still say where they were measured)."""
    env_cols = [k for k in ("device_name", "dtype", "torch", "triton", "python", "torch_threads") if k in env]
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=columns + env_cols, extrasaction="ignore")
    w.writeheader()
    for r in rows:
        w.writerow({**{k: env[k] for k in env_cols}, **{k: _csv_value(r.get(k)) for k in columns}})
    files.write_text(path, buf.getvalue())


def _csv_value(v):
    if isinstance(v, dict):  # histogram {length: steps} or strategies {"mode/B": {steps, tokens, ...}}
        if all(isinstance(x, dict) for x in v.values()):
            return " ".join(f"{k}:{x.get('steps', 0)}" for k, x in v.items())
        return histogram_text(v)
    if isinstance(v, float):
        return f"{v:.6g}"
    return "" if v is None else v


def check_plot_available():
    """Fail before the (long) measurement, not after it."""
    try:
        import matplotlib  # noqa: F401, PLC0415
    except ImportError:
        raise ReportError("--plot needs matplotlib: pip install 'trikern[plot]'") from None


def plot(path, rows: list[dict], title: str):
    """Bars of tokens/s and tokens per forward per (mode, block size)."""
    check_plot_available()
    import matplotlib  # noqa: PLC0415
    matplotlib.use("Agg")  # no display needed: the bench only writes a file
    import matplotlib.pyplot as plt  # noqa: PLC0415

    labels = [r["label"] for r in rows]
    fig, (a, b) = plt.subplots(1, 2, figsize=(max(8.0, 0.7 * len(rows) + 4), 4.2))
    a.bar(labels, [r["tokens_per_second"] for r in rows], color="tab:blue")
    a.set_ylabel("tokens / s (decode)")
    b.bar(labels, [r.get("tokens_per_forward") or 0 for r in rows], color="tab:orange")
    b.set_ylabel("tokens / forward")
    for ax in (a, b):
        ax.tick_params(axis="x", labelrotation=60)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle(title, fontsize=9)
    fig.tight_layout()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
