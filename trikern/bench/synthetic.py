"""`trikern bench --synthetic NAME|CONFIG`: a config's shape with random weights, against the roofline.

At batch 1 a decode forward is bound by reading every weight once plus the KV cache. The bench
builds the model on the meta device and materialises it once on the target device (no second
copy of the weights), fills the cache with `context` random entries, and then measures:

- forward rows, per chunk width T (AR = 1, speculative verify = B, quadratic step = B(B+1)):
  ms per `model.forward` eager and, on CUDA, replayed as a CUDA graph; bytes moved (weights read
  once: every matrix, the embedding only for the T gathered rows; K and V of the cache read once;
  the chunk's K/V written); GB/s; % of the read roofline, both the one this bench measures (a sum
  over a large tensor) and the datasheet figure when the device is known; tokens/s at T = 1.
- `--weights int4|fp8`: the same with the layer linears quantized (weight-only, as
  `load(quantize=)` does: trikern/quant), so the weight bytes, and the % of the read roofline, are
  the quantized model's (packed weights, scales and zero points; the embedding, head and norms stay
  in the model dtype).
- decode rows, per mode and block size: the real decode loop (CUDA graphs where it uses them)
  from a `context`-token random prompt: ms per forward, GB/s, tokens/s. With random weights the
  acceptance means nothing: read ms per forward, not tokens per forward.
"""
from __future__ import annotations

import os
import statistics
import sys
import time

import torch

from . import report

# Datasheet DRAM bandwidth in GB/s by device-name pattern (first match wins; names as torch reports them).
DATASHEET_GBS = (
    ("H200", 4800.0),
    ("H100 PCIe", 2000.0),
    ("H100", 3350.0),  # SXM (torch: "NVIDIA H100 80GB HBM3")
    ("A100 80GB PCIe", 1935.0),
    ("A100-SXM4-80GB", 2039.0),
    ("A100", 1555.0),  # 40 GB
    ("GB10", 273.0),
)


class SyntheticError(ValueError):
    """A synthetic-bench option that cannot be used; the message names it."""


def datasheet_gbs(name: str) -> float | None:
    override = os.environ.get("TRIKERN_PEAK_GBS")  # for devices the table does not know
    if override:
        return float(override)
    for pattern, gbs in DATASHEET_GBS:
        if pattern in name:
            return gbs
    return None


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure_read_gbs(device: torch.device, reps: int = 10) -> float:
    """Read bandwidth of a plain reduction over a tensor far larger than any cache (median of reps)."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        nbytes = min(4 * 2**30, free // 4)
        x = torch.ones(nbytes // 2, dtype=torch.bfloat16, device=device)
        fn = lambda: x.sum(dtype=torch.float32)  # noqa: E731
    else:
        x = torch.ones(64 * 2**20, dtype=torch.float32)  # 256 MiB: well past any CPU cache
        fn = x.sum
    ms = time_ms(fn, device, reps, warmup=2)
    gbs = x.numel() * x.element_size() / (ms * 1e-3) / 1e9
    del x
    return gbs


def time_ms(fn, device: torch.device, reps: int, warmup: int = 3) -> float:
    """Milliseconds per call. CUDA: back-to-back calls between two events (launch cost included, as
    a decode loop pays it). CPU: the median of single calls (robust to a busy shared machine)."""
    for _ in range(warmup):
        fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        for _ in range(reps):
            fn()
        b.record()
        b.synchronize()
        return a.elapsed_time(b) / reps
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append((time.perf_counter() - t0) * 1e3)
    return statistics.median(times)


def graph_ms(fn, device: torch.device, reps: int) -> float:
    """Milliseconds per replay of `fn` captured as a CUDA graph (warmed up on a side stream first,
    so one-time work such as Triton compiles and autotuning stays out of the capture)."""
    s = torch.cuda.Stream(device)
    s.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(s):
        for _ in range(3):
            fn()
    torch.cuda.current_stream(device).wait_stream(s)
    g = torch.cuda.CUDAGraph()
    with torch.cuda.graph(g):
        fn()
    return time_ms(g.replay, device, reps, warmup=2)


# -- the model ------------------------------------------------------------------------------------------
def load_shape(name_or_path: str, layers: int | None):
    """ModelConfig of a shipped name or a config path, optionally cut to `layers` layers. EOS is
    dropped: random weights would otherwise end a decode row at a chance EOS."""
    from ..config import ModelConfig  # noqa: PLC0415
    from ..configs import load_config  # noqa: PLC0415

    try:
        cfg = load_config(name_or_path)
    except (ValueError, OSError) as e:
        raise SyntheticError(f"--synthetic {name_or_path}: {e}") from None
    d = dict(cfg.raw)
    if layers is not None:
        d["num_hidden_layers"] = layers
    d["eos_token_id"] = None
    return ModelConfig.from_dict(d, f"--synthetic {name_or_path}"), d


def random_model(cfg, device, dtype, backend: str, seed: int = 0):
    """The Transformer of `cfg` with small random weights, allocated once on `device`."""
    from ..config import inv_freq  # noqa: PLC0415
    from ..model import Transformer  # noqa: PLC0415

    with torch.device("meta"):
        m = Transformer(cfg, backend=backend).to(dtype=dtype)
    m = m.to_empty(device=device)
    g = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for p in m.parameters():
            # Norm weights 1, matrices N(0, 0.02): activations stay in range through every layer.
            if p.dim() == 1:
                p.fill_(1.0)
            else:
                p.normal_(0.0, 0.02, generator=g)
    m.inv_freq = inv_freq(cfg.rope, cfg.head_dim).to(device)  # a non-persistent buffer left empty by to_empty
    return m.requires_grad_(False).eval()


def weight_bytes(model) -> tuple[int, int]:
    """(bytes of every weight, bytes of the embedding table) of `model`. Weights: the parameters and
    the quantized linears' buffers (packed weights, scales, zero points); not the RoPE frequencies."""
    total = sum(p.numel() * p.element_size() for p in model.parameters())
    total += sum(b.numel() * b.element_size() for n, b in model.named_buffers() if n != "inv_freq")
    emb = model.embed_tokens.weight
    return total, emb.numel() * emb.element_size()


def parameter_count(model) -> int:
    """Parameters of the model as a 16-bit checkpoint holds them (a quantized linear counts N x K)."""
    from ..model import QuantLinear  # noqa: PLC0415

    quant = [m for m in model.modules() if isinstance(m, QuantLinear)]
    return sum(p.numel() for p in model.parameters()) + sum(m.out_features * m.in_features for m in quant)


def weights_label(a, dtype) -> str:
    """What the layer linears hold: the model dtype, or the quantized format."""
    if not getattr(a, "weights", None):
        return str(dtype).removeprefix("torch.")
    return f"int4 g{a.group_size}" if a.weights == "int4" else "fp8 e4m3"


def kv_bytes_per_token(cfg, dtype) -> int:
    return 2 * cfg.num_hidden_layers * cfg.num_key_value_heads * cfg.head_dim * torch.finfo(dtype).bits // 8


def bytes_per_forward(model, T: int, cache_len: int) -> dict:
    cfg = model.cfg
    total, emb = weight_bytes(model)
    es = model.embed_tokens.weight.element_size()
    # The embedding is gathered (T rows), unless it is also the head, which reads all of it.
    weights = total if cfg.tie_word_embeddings else total - emb + T * cfg.hidden_size * es
    per_tok = kv_bytes_per_token(cfg, model.embed_tokens.weight.dtype)
    kv = per_tok * cache_len + per_tok * T  # read the cache, write the chunk
    return {"weight_bytes": weights, "kv_bytes": kv, "bytes": weights + kv}


# -- the bench --------------------------------------------------------------------------------------------
def run(a, device, dtype, log=None) -> dict:
    from ..api import Model  # noqa: PLC0415
    from ..cache import KVCache  # noqa: PLC0415
    from ..kernels import CAUSAL  # noqa: PLC0415

    cfg, raw = load_shape(a.synthetic, a.layers)
    widths, context = a.widths, a.context
    need = context + max(widths) + (a.decode_tokens + max(b or 0 for b in a.block_sizes) if a.decode_tokens else 0)
    if need > cfg.max_position_embeddings:
        raise SyntheticError(f"--context {context}: context + widths + decode tokens = {need} exceeds the "
                             f"config's max_position_embeddings ({cfg.max_position_embeddings})")
    modes = a.modes if a.modes is not None else (a.all_modes if cfg.tri_mode else ("ar",))
    if not cfg.tri_mode and set(modes) - {"ar"}:
        raise SyntheticError(f"--modes: {cfg.model_type} configs decode in mode 'ar' only")
    reps = a.reps or (20 if device.type == "cuda" else 3)
    env = report.environment(device, dtype)
    sheet = datasheet_gbs(env["device_name"]) if device.type == "cuda" else None
    t0 = time.perf_counter()
    measured = measure_read_gbs(device)
    print(f"[bench] read bandwidth {measured:.1f} GB/s (measured), datasheet "
          f"{report.fmt(sheet)} GB/s", file=log or sys.stderr, flush=True)
    model = random_model(cfg, device, dtype, a.backend, a.seed)
    if getattr(a, "weights", None):
        from ..quant import Spec  # noqa: PLC0415
        from ..quant.checkpoint import quantize_model  # noqa: PLC0415
        quantize_model(model, Spec(a.weights, a.group_size))
    total, emb = weight_bytes(model)
    shape = {"config": a.synthetic, "model_type": cfg.model_type, "layers": cfg.num_hidden_layers,
             "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
             "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
             "vocab_size": cfg.vocab_size, "parameters": parameter_count(model),
             "weights": weights_label(a, dtype), "weight_bytes": total, "weight_bytes_without_embedding": total - emb, "kv_bytes_per_token": kv_bytes_per_token(cfg, dtype)}

    def roof(row: dict, ms: float | None):
        if ms:
            gbs = row["bytes"] / (ms * 1e-3) / 1e9
            row.update(gb_per_s=gbs, pct_measured=100 * gbs / measured,
                       pct_datasheet=100 * gbs / sheet if sheet else None)
        row["roofline_ms"] = row["bytes"] / (measured * 1e9) * 1e3

    forward = []
    cache = KVCache.for_model(cfg, context, dtype, device, scratch=max(widths))
    g = torch.Generator(device=device).manual_seed(a.seed + 1)
    cache.k.normal_(generator=g)
    cache.v.normal_(generator=g)
    cache.commit(context)
    with torch.inference_mode():
        for T in widths:
            tokens = torch.randint(0, cfg.vocab_size, (T,), device=device, generator=g)
            pos = torch.arange(context, context + T, device=device)
            # write_cache as AR / verify do; nothing is committed, so every call writes the same scratch slots.
            fn = lambda: model(tokens, pos, cache, CAUSAL, write_cache=True)  # noqa: E731
            row = {"T": T, "attention": "causal", "context": context, **bytes_per_forward(model, T, context)}
            row["eager_ms"] = time_ms(fn, device, reps)
            row["graph_ms"] = None
            if device.type == "cuda" and not a.no_cuda_graphs:
                try:
                    row["graph_ms"] = graph_ms(fn, device, reps)
                except Exception as e:  # noqa: BLE001 - a failed capture is a finding, not a crash
                    row["graph_error"] = f"{type(e).__name__}: {e}"[:300]
            best = row["graph_ms"] or row["eager_ms"]
            roof(row, best)
            row["tokens_per_second"] = 1e3 / best if T == 1 else None
            forward.append(row)
            print(f"[bench] forward T={T}: eager {row['eager_ms']:.3f} ms, graph {report.fmt(row['graph_ms'])} ms",
                  file=log or sys.stderr, flush=True)
    del cache

    decode = []
    if a.decode_tokens:
        m = Model(model, None)
        prompt = torch.randint(0, cfg.vocab_size, (context,), generator=torch.Generator().manual_seed(a.seed))
        if cfg.mask_token_id is not None:  # a mask id inside the prompt would read as a hole to fill
            prompt[prompt == cfg.mask_token_id] = (cfg.mask_token_id + 1) % cfg.vocab_size
        prompt = prompt.tolist()
        from .promptset import BLOCKLESS, label, once_block  # noqa: PLC0415
        for mode in modes:
            for b in ([once_block(mode, a.block_sizes)] if mode in BLOCKLESS else a.block_sizes):
                kw = dict(mode=mode, block_size=b, cuda_graphs=False if a.no_cuda_graphs else None)
                m.generate(prompt, max_new_tokens=min(8, a.decode_tokens), **kw)  # warm-up: compiles, captures
                s = m.generate(prompt, max_new_tokens=a.decode_tokens, **kw).stats
                ms = 1e3 * s["decode_s"] / s["forwards"] if s["forwards"] else None
                row = {"mode": mode, "block_size": b, "generated_tokens": s["generated_tokens"],
                       "forwards": s["forwards"], "ms_per_forward": ms, "tokens_per_second": s["tokens_per_second"],
                       "tokens_per_forward": s["tokens_per_forward"],
                       "prefill_tokens_per_second": s["prefill_tokens_per_second"],
                       # The cache grows during the row: charge the KV at its mean length.
                       **bytes_per_forward(model, 1, context + s["generated_tokens"] // 2)}
                roof(row, ms)
                decode.append(row)
                print(f"[bench] decode {label(mode, b)}: {report.fmt(ms)} ms/forward, "
                      f"{s['tokens_per_second']:.1f} tok/s", file=log or sys.stderr, flush=True)
    return {"bench": "synthetic", "env": env, "shape": shape, "config_json": raw,
            "bandwidth": {"measured_gb_per_s": measured, "datasheet_gb_per_s": sheet,
                          "measured_with": "sum over a large tensor"},
            "settings": {"context": context, "widths": list(widths), "reps": reps, "backend": a.backend,
                         "weights": getattr(a, "weights", None), "group_size": getattr(a, "group_size", None),
                         "cuda_graphs": device.type == "cuda" and not a.no_cuda_graphs,
                         "decode_tokens": a.decode_tokens, "seed": a.seed},
            "forward": forward, "decode": decode, "wall_s": round(time.perf_counter() - t0, 3)}


FORWARD_COLUMNS = [("T", "T"), ("eager_ms", "eager ms"), ("graph_ms", "graph ms"), ("mb", "MB moved"),
                   ("gb_per_s", "GB/s"), ("pct_measured", "% measured"), ("pct_datasheet", "% datasheet"),
                   ("roofline_ms", "roofline ms"), ("tokens_per_second", "tok/s")]
DECODE_COLUMNS = [("label", "mode"), ("ms_per_forward", "ms/forward"), ("gb_per_s", "GB/s"),
                  ("pct_measured", "% measured"), ("tokens_per_second", "tok/s"), ("tokens_per_forward", "tok/fwd")]


def render(res: dict) -> str:
    e, s, bw = res["env"], res["shape"], res["bandwidth"]
    lines = [f"{e['device_name']} ({e['device']}, {e['dtype']}), torch {e['torch']}, triton {e['triton']}",
             f"{s['config']}: {s['layers']} layers, width {s['hidden_size']}, {s['parameters'] / 1e6:.1f}M parameters, "
             f"linears in {s.get('weights', e['dtype'])}: {_size(s.get('weight_bytes', 0))} of weights, "
             f"{_size(s['weight_bytes_without_embedding'])} outside the embedding; "
             f"cache {res['settings']['context']} tokens",
             f"read roofline: {bw['measured_gb_per_s']:.1f} GB/s measured, datasheet "
             f"{report.fmt(bw['datasheet_gb_per_s'])} GB/s",
             report.table([{**r, "mb": r["bytes"] / 1e6} for r in res["forward"]], FORWARD_COLUMNS)]
    if res["decode"]:
        from .promptset import label  # noqa: PLC0415
        rows = [{**r, "label": label(r["mode"], r["block_size"])} for r in res["decode"]]
        lines += ["decode loop (random weights: acceptance means nothing):", report.table(rows, DECODE_COLUMNS)]
    return "\n".join(lines)


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.2f} MB"
