"""`trikern bench --synthetic NAME|CONFIG`: a config's shape with random weights, against the roofline.

At batch 1 a decode forward is bound by reading every weight once plus the KV cache. The bench
builds the model on the meta device and materialises it once on the target device (no second
copy of the weights), fills the cache with `context` random entries, and then measures:

- forward rows, per chunk width T (AR = 1, speculative verify = B, quadratic step = B(B+1)):
  ms per `model.forward` eager and, on CUDA, replayed as a CUDA graph; bytes moved (weights read
  once: every matrix, the embedding only for the T gathered rows; K and V of the cache read once;
  the chunk's K/V written); GB/s; % of the read roofline, both the one this bench measures (a sum
  over a large tensor) and the datasheet figure when the device is known; tokens/s at T = 1.
  Kernels per forward and per layer (trikern/kernels/launches.py: Triton launches plus the torch
  ops that launch a kernel, on one eager forward; per layer from a second model of the same shape
  with one layer, the rest being the embedding, final norm and head), on CPU too: with
  TRITON_INTERPRET=1 and --backend triton the Triton launches are the interpreter's, and the report
  says so. The JSON also has the counts by kernel name and the path each autotuned op took.
- `--weights int4|fp8`: the same with the layer linears quantized (weight-only, as
  `load(quantize=)` does: trikern/quant), so the weight bytes, and the % of the read roofline, are
  the quantized model's (packed weights, scales and zero points; the embedding, head and norms stay
  in the model dtype).
- `--tree-nodes N1,N2`: tree-verify rows, per node budget N: the verify pass of a linear draft
  tree (issue 25) -- N nodes at positions context + depth, each seeing the cache and its ancestors
  (the TREE pattern), the tree built by `kernels.build_tree` from random draft log-probabilities of
  depths 1 .. B-1 (B: the largest `--block-sizes`) -- timed as the forward rows are, and against a
  causal forward of the chain's B rows timed alongside (the same pass of a chain).
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
    x = fn = None  # free the tensor now (the lambda holds it too)
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


def as_loaded(model):
    """`model` with its layers fused where `trikern.load` fuses them (`api.fused_by_default`: CUDA,
    the Triton kernels), and on a CPU with backend "triton" under the interpreter too, so the kernels
    counted there are the ones a GPU forward launches. TRIKERN_FUSED=0 keeps the unfused layers, as
    in load. A model without fused layers (no `fuse`) is returned as it is."""
    from .. import api  # noqa: PLC0415
    from ..kernels.autotune import switched_off  # noqa: PLC0415
    from ..kernels.dispatch import interpreting  # noqa: PLC0415

    by_default = getattr(api, "fused_by_default", None)
    if by_default is None or not hasattr(model, "fuse"):
        return model
    interpreted = model.embed_tokens.weight.is_cpu and interpreting() and model.backend == "triton"
    if by_default(model) or (interpreted and model.fusable() and not switched_off("TRIKERN_FUSED")):
        model.fuse()
    return model


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


# -- the forward rows -------------------------------------------------------------------------------------
def counted_by(device: torch.device, backend: str) -> str:
    """How the kernel counts of a run are obtained, in words (the report prints it)."""
    from ..kernels.dispatch import interpreting  # noqa: PLC0415

    if device.type == "cuda":
        return "Triton launches and torch ops on CUDA (eager forward; a CUDA graph replays the same kernels)"
    if backend == "triton" and interpreting():
        return "interpreter-counted: Triton launches under TRITON_INTERPRET=1 and torch ops, on CPU"
    return f"torch ops on CPU (backend {backend}: no Triton launch)"


def roofline(row: dict, ms: float | None, measured: float, sheet: float | None):
    """GB/s and % of the read roofline of a row that moved row["bytes"] in `ms`."""
    if ms:
        gbs = row["bytes"] / (ms * 1e-3) / 1e9
        row.update(gb_per_s=gbs, pct_measured=100 * gbs / measured, pct_datasheet=100 * gbs / sheet if sheet else None)
    row["roofline_ms"] = row["bytes"] / (measured * 1e9) * 1e3


def layer_model(model, raw: dict, a, device, dtype):
    """The model of `raw`'s shape with one layer (two if `model` has one), weights as `model`'s
    (quantized and fused alike): counting both gives the kernels per layer (launches.split_layers)."""
    from ..config import ModelConfig  # noqa: PLC0415

    d = dict(raw, num_hidden_layers=1 if model.cfg.num_hidden_layers > 1 else 2)
    other = random_model(ModelConfig.from_dict(d, "layer-count model"), device, dtype, model.backend, a.seed)
    if getattr(a, "weights", None):
        from ..quant import Spec  # noqa: PLC0415
        from ..quant.checkpoint import quantize_model  # noqa: PLC0415
        quantize_model(other, Spec(a.weights, a.group_size))
    return as_loaded(other)


def _filled_cache(model, context: int, scratch: int, device, g):
    from ..cache import KVCache  # noqa: PLC0415

    cache = KVCache.for_model(model.cfg, context, model.embed_tokens.weight.dtype, device, scratch=scratch)
    cache.k.normal_(generator=g)
    cache.v.normal_(generator=g)
    cache.commit(context)
    return cache


def count_forward(model, tokens, positions, cache, pattern=None, sub_block=0, *, other=None, other_cache=None,
                  warmup: int = 1, other_warmup: int = 1) -> dict:
    """The kernels one `model.forward` of `tokens` at `positions` launches (writing `cache`; pattern
    default CAUSAL), after `warmup` uncounted calls (`other_warmup` for `other`): total, Triton
    launches, torch ops, by name, the configs the tuner chose, the path (torch / triton) of the ops
    that had torch's own path among their candidates, and with `other` (the same shape with another
    layer count, its own cache) the split per layer (trikern.kernels.launches.split_layers)."""
    from ..kernels import CAUSAL, launches  # noqa: PLC0415

    pattern = CAUSAL if pattern is None else pattern

    def forward(m, c):
        return lambda: m(tokens, positions, c, pattern, write_cache=True, sub_block=sub_block)

    counts = launches.count_calls(forward(model, cache), warmup=warmup)
    out = {"kernels": counts.total, "triton_launches": counts.triton_launches, "torch_ops": counts.torch_ops,
           "kernels_by_name": counts.by_name(), "autotune": counts.configs(), "paths": counts.paths()}
    if other is not None:
        split = launches.split_layers(counts, model.cfg.num_hidden_layers,
                                      launches.count_calls(forward(other, other_cache), warmup=other_warmup),
                                      other.cfg.num_hidden_layers)
        out.update(kernels_per_layer=split["per_layer"], kernels_non_layer=split["non_layer"],
                   kernels_split_exact=split["exact"])
    return out


def eager_and_graph_ms(fn, device, reps: int, graphs: bool, warmup: int) -> dict:
    """{"eager_ms", "graph_ms"} of `fn` (graph: on CUDA with `graphs`, else None), and "graph_error"
    when the capture failed (a finding, not a crash)."""
    out = {"eager_ms": time_ms(fn, device, reps, warmup=warmup), "graph_ms": None}
    if device.type == "cuda" and graphs:
        try:
            out["graph_ms"] = graph_ms(fn, device, reps)
        except Exception as e:  # noqa: BLE001
            out["graph_error"] = f"{type(e).__name__}: {e}"[:300]
    return out


def forward_rows(model, widths, context: int, device, reps: int, *, graphs: bool, seed: int, measured: float,
                 sheet: float | None, other=None, warmup: int = 3, log=None) -> list[dict]:
    """One row per chunk width T: a causal `model.forward` writing the cache, over `context` random
    cache entries: ms eager and (CUDA, `graphs`) replayed as a CUDA graph, bytes moved, GB/s, % of
    the roofline, and the kernels one forward launches (trikern.kernels.launches), split per layer
    with `other` (`layer_model`) when given, and the path each autotuned op took. `warmup`: untimed
    calls before the timed ones (0 only where nothing compiles or tunes: the interpreter, tuner off)."""
    from ..kernels import CAUSAL  # noqa: PLC0415

    cfg = model.cfg
    g = torch.Generator(device=device).manual_seed(seed + 1)
    cache = _filled_cache(model, context, max(widths), device, g)
    other_cache = _filled_cache(other, context, max(widths), device, g) if other is not None else None
    rows = []
    with torch.inference_mode():
        for T in widths:
            tokens = torch.randint(0, cfg.vocab_size, (T,), device=device, generator=g)
            pos = torch.arange(context, context + T, device=device)
            # write_cache as AR / verify do; nothing is committed, so every call writes the same scratch slots.
            fn = lambda: model(tokens, pos, cache, CAUSAL, write_cache=True)  # noqa: E731
            row = {"T": T, "attention": "causal", "context": context, **bytes_per_forward(model, T, context)}
            row.update(eager_and_graph_ms(fn, device, reps, graphs, warmup))
            best = row["graph_ms"] or row["eager_ms"]
            roofline(row, best, measured, sheet)
            row["tokens_per_second"] = 1e3 / best if T == 1 else None
            # warm (warmup=0): the timing above compiled and tuned
            row.update(count_forward(model, tokens, pos, cache, other=other, other_cache=other_cache, warmup=0,
                                     other_warmup=min(warmup, 1)))
            rows.append(row)
            print(f"[bench] forward T={T} cache {context}: eager {row['eager_ms']:.3f} ms, graph "
                  f"{report.fmt(row['graph_ms'])} ms, {row['kernels']} kernels", file=log or sys.stderr, flush=True)
    return rows


def tree_rows(model, nodes, B: int, context: int, device, reps: int, *, graphs: bool, seed: int,
              warmup: int = 3, log=None) -> list[dict]:
    """One row per node budget N: ms of a linear tree's verify pass (module docstring), eager and
    (CUDA, `graphs`) replayed, and over the chain's causal pass of B rows."""
    from ..decode.strategies.tree_device import TOP_K  # noqa: PLC0415
    from ..kernels import CAUSAL, TREE, build_tree  # noqa: PLC0415
    from ..kernels.attention import TreeMask  # noqa: PLC0415

    cfg = model.cfg
    g = torch.Generator(device=device).manual_seed(seed + 2)
    cache = _filled_cache(model, context, max(max(nodes), B), device, g)
    logp = torch.log_softmax(torch.randn(max(B - 1, 0), cfg.vocab_size, device=device, generator=g), dim=-1)
    root = torch.randint(0, cfg.vocab_size, (1,), device=device, generator=g)

    rows = []
    with torch.inference_mode():
        chain = torch.randint(0, cfg.vocab_size, (B,), device=device, generator=g)
        chain_pos = torch.arange(context, context + B, device=device)
        base = eager_and_graph_ms(lambda: model(chain, chain_pos, cache, CAUSAL, write_cache=True),
                                  device, reps, graphs, warmup)
        for n in nodes:
            tree = build_tree(logp, root, n, TOP_K, backend=model.backend)
            pos = context + tree.depth
            # A fresh TreeMask per call: a decode step builds its layout anew (CPU: the mask).
            fn = lambda: model(tree.tokens, pos, cache, TREE, write_cache=True,  # noqa: E731
                               sub_block=TreeMask(tree.ancestors, 1))
            row = {"nodes": int(tree.tokens.shape[0]), "depth": int(tree.depth.max()), "B": B,
                   **eager_and_graph_ms(fn, device, reps, graphs, warmup)}
            # Like with like: replayed over replayed where both captured, else eager over eager.
            kind = "graph_ms" if row["graph_ms"] and base["graph_ms"] else "eager_ms"
            row.update(chain_ms=base[kind], x_chain=row[kind] / base[kind])
            rows.append(row)
            print(f"[bench] tree verify N={n} (depth {row['depth']}): eager {row['eager_ms']:.3f} ms, graph "
                  f"{report.fmt(row['graph_ms'])} ms, {row['x_chain']:.2f}x the chain's B={B} pass",
                  file=log or sys.stderr, flush=True)
    return rows


# -- the bench --------------------------------------------------------------------------------------------
def run(a, device, dtype, log=None) -> dict:
    from ..api import Model  # noqa: PLC0415

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
    model = as_loaded(model)
    total, emb = weight_bytes(model)
    shape = {"config": a.synthetic, "model_type": cfg.model_type, "layers": cfg.num_hidden_layers,
             "hidden_size": cfg.hidden_size, "intermediate_size": cfg.intermediate_size,
             "heads": cfg.num_attention_heads, "kv_heads": cfg.num_key_value_heads, "head_dim": cfg.head_dim,
             "vocab_size": cfg.vocab_size, "parameters": parameter_count(model),
             "weights": weights_label(a, dtype), "weight_bytes": total, "weight_bytes_without_embedding": total - emb, "kv_bytes_per_token": kv_bytes_per_token(cfg, dtype)}

    forward = forward_rows(model, widths, context, device, reps, graphs=not a.no_cuda_graphs, seed=a.seed,
                           measured=measured, sheet=sheet, other=layer_model(model, raw, a, device, dtype),
                           log=log)

    trees = []
    if getattr(a, "tree_nodes", None):
        trees = tree_rows(model, a.tree_nodes, max(a.block_sizes), context, device, reps,
                          graphs=not a.no_cuda_graphs, seed=a.seed, log=log)

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
                roofline(row, ms, measured, sheet)
                decode.append(row)
                print(f"[bench] decode {label(mode, b)}: {report.fmt(ms)} ms/forward, "
                      f"{s['tokens_per_second']:.1f} tok/s", file=log or sys.stderr, flush=True)
    return {"bench": "synthetic", "env": env, "shape": shape, "config_json": raw,
            "bandwidth": {"measured_gb_per_s": measured, "datasheet_gb_per_s": sheet,
                          "measured_with": "sum over a large tensor"},
            "settings": {"context": context, "widths": list(widths), "reps": reps, "backend": a.backend,
                         "kernels_counted": counted_by(device, a.backend),
                         "weights": getattr(a, "weights", None), "group_size": getattr(a, "group_size", None),
                         "cuda_graphs": device.type == "cuda" and not a.no_cuda_graphs,
                         "decode_tokens": a.decode_tokens, "seed": a.seed},
            "forward": forward, "tree_verify": trees, "decode": decode, "wall_s": round(time.perf_counter() - t0, 3)}


FORWARD_COLUMNS = [("T", "T"), ("eager_ms", "eager ms"), ("graph_ms", "graph ms"), ("mb", "MB moved"),
                   ("gb_per_s", "GB/s"), ("pct_measured", "% measured"), ("pct_datasheet", "% datasheet"),
                   ("roofline_ms", "roofline ms"), ("tokens_per_second", "tok/s"), ("kernels", "kernels/fwd"),
                   ("kernels_per_layer", "kernels/layer")]
TREE_COLUMNS = [("nodes", "N"), ("depth", "depth"), ("eager_ms", "eager ms"), ("graph_ms", "graph ms"),
                ("x_chain", "x chain pass")]
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
             report.table([{**r, "mb": r["bytes"] / 1e6} for r in res["forward"]], FORWARD_COLUMNS),
             f"kernels: {res['settings'].get('kernels_counted', '-')}; per layer from a {_other_layers(s)}-layer "
             "model of the same shape"]
    if res.get("tree_verify"):
        B = res["tree_verify"][0]["B"]
        lines += [f"tree verify passes (linear draft tree, depths <= {B - 1}; x chain pass: over a causal "
                  f"pass of B = {B} rows):", report.table(res["tree_verify"], TREE_COLUMNS)]
    if res["decode"]:
        from .promptset import label  # noqa: PLC0415
        rows = [{**r, "label": label(r["mode"], r["block_size"])} for r in res["decode"]]
        lines += ["decode loop (random weights: acceptance means nothing):", report.table(rows, DECODE_COLUMNS)]
    return "\n".join(lines)


def _other_layers(shape: dict) -> int:
    return 1 if shape["layers"] > 1 else 2


def _size(nbytes: int) -> str:
    return f"{nbytes / 1e9:.2f} GB" if nbytes >= 1e9 else f"{nbytes / 1e6:.2f} MB"
