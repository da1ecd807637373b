"""`trikern quantize SRC DST`: write a weight-only quantized copy of a 16-bit checkpoint (int4 or fp8,
round to nearest, or by GPTQ with --calibration [--act-order] [--sequential] [--search-ranges]
[--tune-scales N]) in a standard
format other engines load too (trikern/quant/export.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from .options import report_errors


def add_parser(sub):
    q = sub.add_parser("quantize", help="write an int4 / fp8 weight-only quantized copy of a checkpoint",
                       description="Quantize the layer linears (q/k/v/o/gate/up/down projections) of the 16-bit "
                       "checkpoint SRC and write the result to DST: compressed-tensors format by default "
                       "(pack-quantized int4 or float-quantized fp8, as llm-compressor writes; vLLM and transformers "
                       "load it), or GPTQ for int4. Embeddings, the head, norms and the draft LoRA are copied as they "
                       "are, and so are the tokenizer files. DST appears only once complete.")
    q.add_argument("src", metavar="SRC", type=Path, help="16-bit checkpoint folder (or its config.json)")
    q.add_argument("dst", metavar="DST", type=Path, help="output folder (must not exist, unless --overwrite)")
    q.add_argument("--weights", required=True, choices=["int4", "fp8"],
                   help="int4: group-wise with a scale per group of input columns; fp8: e4m3 with a scale per "
                   "output channel")
    q.add_argument("--group-size", type=int, default=128, metavar="N",
                   help="int4: input columns per scale (default 128; 32 and 64 too). A weight whose width N does "
                   "not divide gets the largest half of N that does, recorded in the config")
    sym = q.add_mutually_exclusive_group()
    sym.add_argument("--symmetric", dest="symmetric", action="store_true", default=True,
                     help="int4: zero point fixed at the middle of the range (default)")
    sym.add_argument("--asymmetric", dest="symmetric", action="store_false",
                     help="int4: a zero point per group (min / max of the group)")
    q.add_argument("--format", default="compressed-tensors", choices=["compressed-tensors", "gptq"],
                   help="checkpoint format (default compressed-tensors; gptq: int4 only, v1 zero points)")
    q.add_argument("--calibration", metavar="FILE", type=Path, help="quantize with GPTQ (int4 or fp8), calibrated on "
                   "this text file's first --calibration-tokens tokens (loads the 16-bit model whole); default: "
                   "round to nearest, tensor by tensor")
    q.add_argument("--calibration-tokens", type=int, default=8192, metavar="N",
                   help="tokens of --calibration used, in windows of 512 (default 8192)")
    q.add_argument("--act-order", action="store_true", help="GPTQ (needs --calibration; int4: and --format "
                   "gptq): quantize the columns in order of decreasing input energy, int4 groups following that "
                   "order (desc_act, with each column's group in g_idx); helps int4 on SmolLM2-135M (see "
                   "--tune-scales). fp8: the columns go back in place (no groups), compressed-tensors holds it")
    q.add_argument("--sequential", action="store_true", help="GPTQ (needs --calibration): measure each layer's "
                   "inputs on the layers before it already quantized (one calibration pass per layer)")
    q.add_argument("--search-ranges", action="store_true", help="GPTQ (needs --calibration), int4: search each "
                   "group's range (min / max shrunk by up to 30%%) and zero point for the least weight error")
    q.add_argument("--tune-scales", type=int, default=0, metavar="EPOCHS",
                   help="GPTQ (needs --calibration), int4: then tune the group scales for EPOCHS passes over the "
                   "calibration windows by distillation from the 16-bit model (codes and zero points kept; "
                   "holds a second fp32 copy of the model). With --asymmetric --act-order --search-ranges "
                   "--tune-scales 3 --format gptq: the best int4 measured on SmolLM2-135M")
    q.add_argument("--overwrite", action="store_true", help="replace DST if it exists")
    q.add_argument("--no-progress", dest="progress", action="store_false", help="no progress bar")
    return q


def run(a) -> int:
    return report_errors("quantize", lambda: _quantize(a))


def _quantize(a) -> int:
    from ..quant import Spec  # noqa: PLC0415 - keep `trikern --help` light
    from ..quant.export import quantize_checkpoint  # noqa: PLC0415

    if a.weights == "fp8" and a.group_size != 128:
        raise ValueError("--group-size applies to --weights int4 (fp8 has one scale per output channel)")
    spec = Spec(a.weights, a.group_size, a.symmetric)
    if a.calibration_tokens < 1:
        raise ValueError(f"--calibration-tokens {a.calibration_tokens}: must be >= 1")
    out = quantize_checkpoint(a.src, a.dst, spec, fmt=a.format, overwrite=a.overwrite, progress=a.progress,
                              calibration=a.calibration, calibration_tokens=a.calibration_tokens,
                              sequential=a.sequential, act_order=a.act_order, search_ranges=a.search_ranges,
                              tune_epochs=a.tune_scales)
    gptq = "".join(("calibrated by GPTQ", ", act-order" * a.act_order, ", layer by layer" * a.sequential,
                    ", ranges searched" * a.search_ranges,
                    f", scales tuned {a.tune_scales} epoch(s)" if a.tune_scales else ""))
    print(f"wrote {out} ({a.format}, {a.weights}" + (f", group {a.group_size}, "
          f"{'symmetric' if a.symmetric else 'asymmetric'}" if a.weights == "int4" else "")
          + (f", {gptq}" if a.calibration else ", round to nearest") + ")", file=sys.stderr)
    return 0
