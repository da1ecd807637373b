"""Quantized checkpoints: the external formats users already have, converted to and from trikern's
in-memory int4 / fp8 layouts (kernels/qweight.py) once, at load or save time.

    common.py      what the formats share: errors, which linears, int4 group layouts, RTN quantization
    gptq.py        GPTQ (AutoGPTQ / GPTQModel): qweight / qzeros / scales / g_idx, v1 and v2 zero points
    compressed.py  compressed-tensors (llm-compressor): pack-quantized int4, float-quantized fp8
    checkpoint.py  loading.py's side: which linears a checkpoint quantizes, reading or quantizing them
    export.py      `trikern quantize`: a 16-bit checkpoint -> a compressed-tensors or GPTQ one
    calibrate.py   GPTQ: int4 with each column's rounding error corrected over a calibration set
    awq.py         activation-aware input scales folded into the norms before int4 rounding
    tune.py        int4 group scales tuned by distillation from the 16-bit model (codes kept)
    sizes.py       a config's weight bytes, 16-bit or quantized, computed on the meta device

Which linears: the q/k/v/o/gate/up/down projections of every layer (`encoder.layers.*` for NLD,
`model.layers.*` for Llama-style); embeddings, the head, norms and the draft LoRA stay in the model
dtype. Nothing here imports the compressed-tensors package: its facts are written down in
compressed.py, and the tests check them against it where it is installed.
"""
from .common import FormatError, Spec, quantize_weight

__all__ = ["FormatError", "Spec", "quantize_weight"]
