"""GPU benchmark of the attention kernel (every attention pattern) against torch SDPA and FlexAttention.

NLD heads (32 query / 8 kv heads of 128, bf16). Decode-shaped cases (1 token, a linear-step block
of 8 or 32, a quadratic step of 8 x 9 tokens) over a long committed cache, where the op is bound by
reading the cache: achieved GB/s and % of the DRAM roofline are the figures to watch. Prefill-shaped
cases (causal, empty or half-full cache) are compute-bound: TFLOP/s is reported beside GB/s.

Implementations: `triton` (the autotuned kernel, cache length as a device tensor), `torch_ref` (what
backend="torch" runs: concatenation plus a dense mask), `sdpa` (F.scaled_dot_product_attention on
pre-concatenated K/V with a prebuilt mask, or is_causal when the cache is empty: the setup is not
timed, so it is a lower bound for any torch path), `flex` (FlexAttention, compiled, with the pattern's
mask_mod; skipped if this torch has none).

    python benchmarks/bench_attention.py [--csv out.csv]    # exits 0 with a message without CUDA
    python benchmarks/bench_attention.py --smoke             # CPU interpreter, tiny shapes: code check only
"""
from __future__ import annotations

import importlib
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402

HQ, HKV, HEAD = 32, 8, 128
# (label, T, cache_len, pattern name, sub_block)
CASES = [
    ("decode", 1, 4096, "causal", 0),
    ("decode", 1, 32768, "causal", 0),
    ("decode", 1, 131072, "causal", 0),
    ("draft-B8", 8, 32768, "bidirectional", 0),
    ("verify-B32", 32, 32768, "causal", 0),
    ("draft-B32", 32, 4096, "bidirectional", 0),
    ("quadratic-B8", 72, 4096, "quadratic", 9),
    ("quadratic-B8", 72, 32768, "quadratic", 9),
    ("prefill", 512, 0, "causal", 0),
    ("prefill", 4096, 0, "causal", 0),
    ("prefill-chunk", 2048, 2048, "causal", 0),
]
SMOKE = dict(HQ=4, HKV=2, HEAD=64, CASES=[("decode", 1, 40, "causal", 0), ("quadratic-B2", 6, 9, "quadratic", 3),
                                          ("prefill", 20, 0, "causal", 0)])


def visible_pairs(A, pattern: int, T: int, n: int, sub_block: int) -> int:
    """Query-key pairs the mask lets through (cache plus chunk), for the FLOP count."""
    if pattern == A.CAUSAL:
        chunk = T * (T + 1) // 2
    elif pattern == A.BIDIRECTIONAL:
        chunk = T * T
    else:
        chunk = int(A.chunk_mask(pattern, T, sub_block).sum())
    return T * n + chunk


def flex_impl(torch, A, pattern, T, n, sub_block, q, keys, vals, scale):
    """A compiled FlexAttention call over [cache prefix, chunk] with the pattern's mask_mod, or None."""
    try:
        from torch.nn.attention.flex_attention import create_block_mask, flex_attention
    except ImportError:
        return None
    L = n + T

    def mask_mod(b, h, qi, kj):
        j = kj - n
        in_cache = kj < n
        if pattern == A.CAUSAL:
            chunk = j <= qi
        elif pattern == A.BIDIRECTIONAL:
            chunk = j >= 0
        else:
            anchor = (j % sub_block == 0) & (j // sub_block <= qi // sub_block)
            own = (qi % sub_block > 0) & (j // sub_block == qi // sub_block)
            chunk = anchor | own
        return in_cache | chunk

    block_mask = create_block_mask(mask_mod, 1, 1, T, L, device=q.device)
    fn = torch.compile(flex_attention, dynamic=False)
    qh = q.transpose(0, 1)[None]
    return lambda: fn(qh, keys, vals, block_mask=block_mask, scale=scale, enable_gqa=True)


def main(argv=None) -> int:
    args = common.parse_args(__doc__.splitlines()[0], argv)
    env = common.require_cuda_or_exit(args)
    import torch
    import torch.nn.functional as F

    A = importlib.import_module("trikern.kernels.attention")
    device = env["device"]
    hq, hkv, d = (SMOKE["HQ"], SMOKE["HKV"], SMOKE["HEAD"]) if args.smoke else (HQ, HKV, HEAD)
    cases = SMOKE["CASES"] if args.smoke else CASES
    dt = torch.bfloat16 if device == "cuda" else torch.float32
    es = torch.finfo(dt).bits // 8
    results = []
    for label, T, n, pattern_name, sub in cases:
        pattern = A.PATTERNS[pattern_name]
        S = max(n, 1) + 64  # capacity: the committed cache plus room for a chunk
        g = torch.Generator(device=device).manual_seed(0)
        r = lambda *shape: torch.randn(*shape, generator=g, device=device, dtype=dt)  # noqa: E731
        q, k, v = r(T, hq, d), r(T, hkv, d), r(T, hkv, d)
        kc, vc = r(hkv, S, d), r(hkv, S, d)
        n_dev = torch.tensor(n, device=device)
        scale = 1.0 / math.sqrt(d)
        keys = torch.cat([kc[:, :n], k.transpose(0, 1)], dim=1)[None].contiguous()
        vals = torch.cat([vc[:, :n], v.transpose(0, 1)], dim=1)[None].contiguous()
        qh = q.transpose(0, 1)[None].contiguous()
        mask = A.full_mask(pattern, T, n, n, sub, device)
        impls = {
            "triton": lambda: A.attention_triton(q, k, v, kc, vc, n_dev, pattern, sub, scale),
            "torch_ref": lambda: A.attention_ref(q, k, v, kc, vc, n_dev, pattern, sub, scale),
        }
        if pattern == A.CAUSAL and n == 0:
            impls["sdpa"] = lambda: F.scaled_dot_product_attention(qh, keys, vals, is_causal=True, scale=scale,
                                                                   enable_gqa=True)
        elif pattern == A.BIDIRECTIONAL:
            impls["sdpa"] = lambda: F.scaled_dot_product_attention(qh, keys, vals, scale=scale, enable_gqa=True)
        else:
            impls["sdpa"] = lambda: F.scaled_dot_product_attention(qh, keys, vals, attn_mask=mask, scale=scale,
                                                                   enable_gqa=True)
        if device == "cuda":
            try:
                fx = flex_impl(torch, A, pattern, T, n, sub, q, keys, vals, scale)
                if fx is not None:
                    fx()
                    impls["flex"] = fx
            except Exception as e:  # noqa: BLE001 -- an unsupported shape is a note, not a failed benchmark
                print(f"flex skipped for {label} T={T} n={n}: {type(e).__name__}: {str(e).splitlines()[0]}")
        out = impls["triton"]()  # tunes outside the timed region
        ref = A.attention_ref(q.float(), k.float(), v.float(), kc.float(), vc.float(), n, pattern, sub, scale)
        err = (out.float() - ref).abs().max().item()
        # Bytes the op must move once: the committed cache (K and V), the chunk's q/k/v and the output.
        nbytes = es * (2 * hkv * n * d + 2 * T * hq * d + 2 * T * hkv * d)
        flops = 4 * hq * d * visible_pairs(A, pattern, T, n, sub)
        for impl, call in impls.items():
            ms = common.time_ms(call, env)
            bw = common.gbs(nbytes, ms)
            results.append({"case": label, "pattern": pattern_name, "T": T, "cache_len": n, "impl": impl,
                            "dtype": str(dt).removeprefix("torch."), "us": ms * 1e3, "MB": nbytes / 1e6,
                            "GB_s": bw, "pct_roofline": common.pct_roofline(bw, env),
                            "TFLOP_s": flops / (ms * 1e-3) / 1e12, "max_err": err if impl == "triton" else ""})
    common.print_table(results, ["case", "pattern", "T", "cache_len", "impl", "us", "GB_s", "pct_roofline",
                                 "TFLOP_s", "max_err"])
    if not args.smoke or args.csv:
        path = common.write_csv(args.csv or common.default_csv("attention", env), results, env)
        print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
