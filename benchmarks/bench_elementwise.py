"""GPU benchmark of the memory-bound kernels (rope, rmsnorm, rmsnorm+residual, swiglu) against torch.

For NLD-8B shapes (hidden 4096, 32 q / 8 kv heads of 128, intermediate 14336) at decode and prefill
row counts, times the Triton kernel (autotuned), the PyTorch reference in eager mode and the same
reference under torch.compile; reports achieved GB/s (bytes each op must read + write, once) and % of
the DRAM bandwidth roofline, and appends CSV rows tagged with the GPU and versions.

    python benchmarks/bench_elementwise.py [--csv out.csv]    # exits 0 with a message without CUDA
    python benchmarks/bench_elementwise.py --smoke             # CPU interpreter, tiny shapes: code check only
"""
from __future__ import annotations

import importlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HIDDEN, HQ, HKV, HEAD, INTER = 4096, 32, 8, 128, 14336
ROWS = (1, 16, 256, 4096)
SMOKE = dict(HIDDEN=64, HQ=4, HKV=2, HEAD=32, INTER=96, ROWS=(1, 5))


def cases(device, dims, rows):
    """(op, T, bytes, triton_fn, ref_fn, ref_args) for every op and row count."""
    import torch

    R = importlib.import_module("trikern.kernels.rope")
    N = importlib.import_module("trikern.kernels.rmsnorm")
    S = importlib.import_module("trikern.kernels.swiglu")
    H, hq, hkv, d, inter = dims["HIDDEN"], dims["HQ"], dims["HKV"], dims["HEAD"], dims["INTER"]
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    es = torch.finfo(dt).bits // 8
    f = 1.0 / (1e6 ** (torch.arange(0, d, 2, device=device, dtype=torch.float32) / d))
    out = []
    for T in rows:
        q = torch.randn(T, hq, d, device=device, dtype=dt)
        k = torch.randn(T, hkv, d, device=device, dtype=dt)
        pos = torch.arange(T, device=device) + 20000  # past the llama-4 threshold: scaling active
        rope_args = (q, k, pos, f, 1.0, 0.1, 16384)
        out.append(("rope", T, 2 * T * (hq + hkv) * d * es + T * 8 + f.numel() * 4,
                    R.rope_triton, R.rope_ref, rope_args))
        x = torch.randn(T, H, device=device, dtype=dt)
        r = torch.randn_like(x)
        w = torch.randn(H, device=device, dtype=dt)
        out.append(("rmsnorm", T, 2 * T * H * es + H * es, N.rmsnorm_triton, N.rmsnorm_ref, (x, w, 1e-5)))
        out.append(("rmsnorm+res", T, 4 * T * H * es + H * es, N.add_rmsnorm_triton, N.add_rmsnorm_ref,
                    (x, r, w, 1e-5)))
        g = torch.randn(T, inter, device=device, dtype=dt)
        u = torch.randn_like(g)
        out.append(("swiglu", T, 3 * T * inter * es, S.swiglu_triton, S.swiglu_ref, (g, u)))
    return out


def main(argv=None) -> int:
    args = common.parse_args(__doc__.splitlines()[0], argv)
    env = common.require_cuda_or_exit(args)
    import torch

    device = env["device"]
    dims = SMOKE if args.smoke else dict(HIDDEN=HIDDEN, HQ=HQ, HKV=HKV, HEAD=HEAD, INTER=INTER)
    rows_ = SMOKE["ROWS"] if args.smoke else ROWS
    if device == "cuda":
        import torch._dynamo.config as dynamo_config
        dynamo_config.recompile_limit = 64  # one graph per shape; the default 8 would fall back to eager
        dynamo_config.fail_on_recompile_limit_hit = True
    results = []
    compiled = {}
    for op, T, nbytes, kernel, ref, a in cases(device, dims, rows_):
        kernel(*a)  # tune outside the timed region
        impls = {"triton": lambda: kernel(*a), "eager": lambda: ref(*a)}
        if device == "cuda":
            fn = compiled.setdefault(ref, torch.compile(ref, dynamic=False))
            impls["compile"] = lambda: fn(*a)
        for impl, call in impls.items():
            ms = common.time_ms(call, env)
            bw = common.gbs(nbytes, ms)
            results.append({"op": op, "T": T, "impl": impl, "dtype": str(a[0].dtype).removeprefix("torch."),
                            "us": ms * 1e3, "MB": nbytes / 1e6, "GB_s": bw, "pct_roofline": common.pct_roofline(bw, env)})
    common.print_table(results, ["op", "T", "impl", "us", "MB", "GB_s", "pct_roofline"])
    path = common.write_csv(args.csv or common.default_csv("elementwise", env), results, env)
    print(f"\n{env['gpu']} (sm_{env['sm']}), peak {env['peak_gbs']:.0f} GB/s, torch {env['torch']}, "
          f"triton {env['triton']}: {len(results)} rows -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
