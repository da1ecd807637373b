"""Weight bytes of a config's model, 16-bit or quantized, computed without allocating it: the
figures `trikern bench --synthetic` and benchmarks/bench_quant_load.py report for shapes too big to
build here (NLD-8B: 17 GB in bf16).

The bytes are not a formula written a second time: the model is built on the meta device, the
loader's own plan (checkpoint.plan) picks the linears a `quantize=` load quantizes, and each is
quantized by the loader's own `quantize_weight` on meta tensors (torch computes every output's shape
and dtype without data), so a change to a layout (scale dtype, zero points, group choice) changes
these figures too. tests/test_quant_sizes.py checks them against a model really loaded with
`quantize=`.

    sizes(cfg, spec)  -> {"total", "linears", "embedding", "head", "other", "read_per_token",
                          "largest_source", "load_peak"} in bytes (spec None: the 16-bit model)

`read_per_token` is what one T = 1 forward reads of the weights: everything but the embedding table,
of which it gathers one row (a tied head reads the table whole, so it is counted once, in full).
`load_peak` is the estimate of a `quantize=` load's peak memory: the quantized model plus the largest
16-bit linear read to be quantized (`largest_source`); the loader's smaller temporaries (fp32 rows a
chunk at a time, a fused weight's pieces before they are stacked) come on top: bench_quant_load.py
measures them.
"""
from __future__ import annotations

import torch

from .common import Spec, quantize_weight, stack


def sizes(cfg, spec: Spec | None, dtype: torch.dtype = torch.bfloat16, source_dtype: torch.dtype = torch.bfloat16) -> dict:
    """Byte counts of `cfg`'s model in `dtype`, its layer linears quantized by `spec` (see the module
    docstring); `source_dtype` is the checkpoint's, read to quantize."""
    from ..model import QuantLinear, Transformer  # noqa: PLC0415
    from .checkpoint import plan  # noqa: PLC0415

    with torch.device("meta"):
        model = Transformer(cfg, backend="torch").to(dtype)
    es = torch.finfo(dtype).bits // 8
    largest = linears = embedding = head = other = 0
    if spec is not None:
        load = plan(model, cfg, None, spec)  # swaps each planned linear for a meta placeholder
        done: dict[tuple, int] = {}  # every layer has the same shapes: quantize each kind once
        for path, pieces in load.modules.items():
            key = tuple(p.shape for p in pieces)
            if key not in done:
                ws = []
                for p in pieces:
                    W = torch.empty(p.shape, dtype=source_dtype, device="meta")
                    largest = max(largest, W.numel() * W.element_size())
                    w = quantize_weight(W, spec, p.name)
                    if hasattr(w, "scales") and w.scales.dtype != dtype:
                        w.scales = w.scales.to(dtype)  # as checkpoint.QuantLoad._one: scales in the model dtype
                    ws.append(w)
                done[key] = QuantLinear(stack(ws), backend="torch")
            linears += sum(t.numel() * t.element_size() for t in done[key].buffers() if t is not None)
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if name == "inv_freq" or isinstance(model.get_submodule(name.rpartition(".")[0]), QuantLinear):
            continue  # RoPE frequencies: recomputed at load, not weights; placeholders: counted above
        n = t.numel() * t.element_size()
        if name == "embed_tokens.weight":
            embedding += n
        elif name.startswith("lm_head."):
            head += n
        elif name.startswith("layers.") and "_proj." in name:
            linears += n
        else:
            other += n  # norms
    total = linears + embedding + head + other
    tied = model.lm_head is None
    read = total if tied else total - embedding + cfg.hidden_size * es
    return {"total": total, "linears": linears, "embedding": embedding, "head": head, "other": other,
            "read_per_token": read, "largest_source": largest, "load_peak": total + largest}
