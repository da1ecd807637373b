"""Benchmark of the weight-only quantized linear (kernels/quant_linear.py, kernels/cpu/quant_linear.py).

CPU (always): at every linear layer of the embedded model (trikern/assets/default: fused qkv, o,
gate_up, down, lm_head) and 1, 8 and 72 rows (an AR step, a linear draft block, a quadratic step),
times the dense model's own CPU product (kernels/cpu/linear.py on the bf16 weight; F.linear for fp32)
against `quant_linear(backend="cpu")` on int4 (group 64, symmetric and with zero points) and fp8
copies of the same weight, and says which path the quantized op chose. Times are the best median
of rounds that alternate the two (this kind of machine's speed drifts).

GPU (when CUDA is present): NLD-8B projections (hidden 4096, intermediate 14336) at the same row
counts: the Triton kernel (autotuned), torch's dequantize-then-matmul, and the dense bf16 F.linear.

    python benchmarks/bench_quant_linear.py [--csv out.csv] [--dtype bfloat16|float32] [--threads N]
        (prints the table; the CSV only with --csv)
    python benchmarks/bench_quant_linear.py --smoke    # tiny and quick (the GPU part under the interpreter)
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
ROWS = (1, 8, 72)
FORMATS = ("int4g64", "int4g64z", "fp8")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--csv", default=None, help="also append the rows to this CSV file")
    p.add_argument("--smoke", action="store_true", help="few repetitions, tiny GPU shapes under the Triton interpreter")
    p.add_argument("--dtype", default=None, choices=("bfloat16", "float32"),
                   help="CPU activation / dense dtype (default: the CPU's default, cpu_features.py)")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    return p.parse_args(argv)


def embedded_shapes() -> list[tuple[str, int, int]]:
    """(layer, N, K) of every linear layer of the embedded model."""
    cfg = json.loads((ROOT / "trikern" / "assets" / "default" / "config.json").read_text())
    H, D, I = cfg["hidden_size"], cfg["head_dim"], cfg["intermediate_size"]
    hq, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
    return [("qkv", (hq + 2 * hkv) * D, H), ("o", H, hq * D), ("gate_up", 2 * I, H), ("down", H, I),
            ("lm_head", cfg["vocab_size"], H)]


def quantize(W, fmt: str):
    from trikern.kernels.qweight import quantize_fp8, quantize_int4

    if fmt == "fp8":
        return quantize_fp8(W)
    return quantize_int4(W, int(fmt[5:].rstrip("z")), symmetric=not fmt.endswith("z"), scale_dtype=W.dtype)


def best_median_us(fns: dict, rounds: int, reps: int) -> dict:
    """Per name, the best over `rounds` of the median of `reps` timed calls, rounds alternating the fns."""
    best = {k: float("inf") for k in fns}
    for _ in range(rounds):
        for k, fn in fns.items():
            ts = []
            for _ in range(reps):
                t = time.perf_counter()
                fn()
                ts.append(time.perf_counter() - t)
            best[k] = min(best[k], statistics.median(ts) * 1e6)
    return best


def cpu_rows(dtype_name: str | None, smoke: bool) -> list[dict]:
    import torch

    from trikern import cpu_features
    from trikern.kernels import quant_linear
    from trikern.kernels.cpu import linear as cpu_linear
    from trikern.kernels.cpu import quant_linear as cpu_quant

    dtype = getattr(torch, dtype_name) if dtype_name else cpu_features.detect().default_dtype
    rounds, reps = (2, 3) if smoke else (7, 15)
    g = torch.Generator().manual_seed(0)
    rows = []

    class Holder:  # the module whose __dict__ cpu/linear.py keeps the dense weight's layouts in
        pass

    with torch.inference_mode():
        for layer, N, K in embedded_shapes():
            W = (torch.randn(N, K, generator=g) / K ** 0.5).to(dtype)
            qs = {fmt: quantize(W, fmt) for fmt in FORMATS if fmt == "fp8" or K % int(fmt[5:].rstrip("z")) == 0}
            holder = Holder()
            for M in ROWS:
                x = torch.randn(M, K, generator=g).to(dtype)
                dense = (lambda: cpu_linear.linear(x, W, holder)) if dtype == torch.bfloat16 else (
                    lambda: torch.nn.functional.linear(x, W))
                fns = {"dense": dense}
                for fmt, w in qs.items():
                    fns[fmt] = (lambda w=w: quant_linear(x, w, backend="cpu"))
                for fn in fns.values():  # first calls lay out weights and time paths: not measured
                    fn()
                us = best_median_us(fns, rounds, reps)
                for fmt, w in qs.items():
                    rows.append({"device": "cpu", "layer": layer, "N": N, "K": K, "rows": M, "dtype": str(dtype)[6:],
                                 "format": fmt, "dense_us": us["dense"], "quant_us": us[fmt],
                                 "quant/dense": us[fmt] / us["dense"],
                                 "path": cpu_quant.chosen_path(w, dtype, M),
                                 "quant_MB": w.nbytes / 1e6, "dense_MB": W.numel() * W.element_size() / 1e6})
    return rows


def gpu_rows(env: dict, smoke: bool) -> list[dict]:
    import torch

    Q = importlib.import_module("trikern.kernels.quant_linear")
    from trikern.kernels.qweight import dequantize

    device = "cuda" if env["device"] == "cuda" else "cpu"
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    shapes = [("qkv", 6144, 4096), ("gate_up", 28672, 4096), ("down", 4096, 14336)] if device == "cuda" else \
        [("tiny", 48, 128)]
    rows = []
    for layer, N, K in shapes:
        W = (torch.randn(N, K, device=device) / K ** 0.5).to(dt)
        for fmt in ("int4g128", "fp8"):
            w = quantize(W, fmt)
            for M in (ROWS if device == "cuda" else (1, 3)):
                x = torch.randn(M, K, device=device).to(dt)
                Q.quant_linear_triton(x, w)  # tune outside the timed region
                impls = {"triton": lambda: Q.quant_linear_triton(x, w),
                         "torch_dequant": lambda: torch.nn.functional.linear(x, dequantize(w, dt)),
                         "dense": lambda: torch.nn.functional.linear(x, W)}
                us = {k: common.time_ms(fn, env) * 1e3 for k, fn in impls.items()}
                rows.append({"device": env["gpu"], "layer": layer, "N": N, "K": K, "rows": M, "dtype": str(dt)[6:],
                             "format": fmt, "dense_us": us["dense"], "quant_us": us["triton"],
                             "quant/dense": us["triton"] / us["dense"], "path": f"torch_dequant {us['torch_dequant']:.3g}us",
                             "quant_MB": w.nbytes / 1e6, "dense_MB": W.numel() * W.element_size() / 1e6})
    return rows


COLUMNS = ["layer", "N", "K", "rows", "dtype", "format", "dense_us", "quant_us", "quant/dense", "path",
           "quant_MB", "dense_MB"]


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.smoke:
        os.environ.setdefault("TRITON_INTERPRET", "1")  # before triton is imported: the GPU part on CPU
    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    from trikern import cpu_features

    rows = cpu_rows(args.dtype, args.smoke)
    print(f"CPU: {cpu_features.detect().summary()}; {torch.get_num_threads()} threads")
    common.print_table(rows, COLUMNS)
    env = common.environment("cuda" if torch.cuda.is_available() and not args.smoke else "cpu")
    if env["device"] == "cuda" or args.smoke:
        g = gpu_rows(env, args.smoke)
        print(f"\nGPU: {env['gpu']} (triton vs dense bf16 F.linear; torch_dequant = dequantize then F.linear)")
        common.print_table(g, COLUMNS)
        rows += g
    if args.csv:
        print(f"\nwrote {common.write_csv(args.csv, rows, env)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
