"""Quantized linears at load time, for loading.py: which of a model's linears a checkpoint's
`quantization_config` quantizes (GPTQ or compressed-tensors), the tensors that names, and reading
them into `QuantLinear`s; or quantizing a 16-bit checkpoint's linears as they are read
(`load(path, quantize="int4" | "fp8")`), one tensor at a time, so that the peak is the quantized
model plus one 16-bit tensor (and a chunk of fp32 temporaries).

The model's fused linears (q/k/v as qkv_proj, gate/up as gate_up_proj) are quantized as a whole or
not at all: a config that quantizes q_proj but not k_proj of a layer is refused, naming both.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..kernels.qweight import Fp8Weight
from ..model import QuantLinear
from . import compressed, gptq
from .common import FormatError, Spec, quantize_weight, stack

QUANTIZE_CONFIG = "quantize_config.json"  # AutoGPTQ's file beside config.json (older checkpoints)
METHODS = {"gptq": gptq, "compressed-tensors": compressed}
SOURCE_DTYPES = (torch.bfloat16, torch.float16, torch.float32)


@dataclass
class Format:
    """A checkpoint's quantization: its method's module (gptq / compressed) and parsed config."""
    method: str
    cfg: object
    source: str

    def module(self, name: str):
        return self.cfg.module(name)

    def tensor_names(self, name: str, scheme) -> tuple[list[str], list[str]]:
        return gptq.tensor_names(name) if self.method == "gptq" else compressed.tensor_names(name, scheme)

    def read_linear(self, src, name, N, K, scheme, dtype):
        return METHODS[self.method].read_linear(src, name, N, K, scheme, dtype)


def read_format(folder: Path, raw: dict) -> Format | None:
    """The quantization of the checkpoint whose config.json is `raw` (None: a 16-bit checkpoint)."""
    source = str(folder / "config.json")
    q = raw.get("quantization_config")
    if q is None and (folder / QUANTIZE_CONFIG).is_file():
        source = str(folder / QUANTIZE_CONFIG)
        try:
            q = json.loads((folder / QUANTIZE_CONFIG).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise FormatError(f"{source}: not valid JSON ({e})") from None
        q.setdefault("quant_method", "gptq")
    if q is None:
        return None
    if not isinstance(q, dict):
        raise FormatError(f"{source}: quantization_config: expected an object")
    method = q.get("quant_method")
    if method not in METHODS:
        raise FormatError(f"{source}: quantization_config.quant_method={method!r} is not supported (trikern reads "
                          f"{', '.join(repr(m) for m in METHODS)})")
    return Format(method, METHODS[method].parse_config(q, source), source)


@dataclass
class Piece:
    name: str  # the checkpoint's module name, with its prefix: encoder.layers.0.self_attn.q_proj
    shape: tuple[int, int]
    scheme: object = None


@dataclass
class QuantLoad:
    """The quantized part of one load: per model module (layers.0.self_attn.qkv_proj), its pieces."""
    modules: dict[str, list[Piece]]
    fmt: Format | None
    spec: Spec | None
    required: dict[str, str] = field(default_factory=dict)  # checkpoint tensor -> module
    optional: dict[str, str] = field(default_factory=dict)

    def read(self, model, sources: dict[str, Path], device, dtype, progress: bool | None, progress_bytes: int):
        """Read (or quantize) every planned module and put a QuantLinear in its place."""
        from tqdm.auto import tqdm  # noqa: PLC0415

        src = Tensors(sources, device)
        total = src.nbytes([n for n in (*self.required, *self.optional) if n in sources])
        show = progress if progress is not None else total > progress_bytes
        verb = "quantizing" if self.spec else "loading"
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not show,
                   desc=f"{verb} {Path(next(iter(sources.values()))).parent.name} ({self.spec.weights if self.spec else self.fmt.method})")
        try:
            for path, pieces in self.modules.items():
                ws, perms = [], []
                for p in pieces:
                    w, perm = self._one(src, p, dtype)
                    ws.append(w)
                    perms.append(perm)
                    bar.update(src.read_bytes)
                    src.read_bytes = 0
                perm = _same_perm(perms, pieces, src)
                model.set_submodule(path, QuantLinear(stack(ws), perm, backend=model.backend))
        finally:
            bar.close()
            src.close()

    def _one(self, src, p: Piece, dtype):
        N, K = p.shape
        if self.spec is None:
            return self.fmt.read_linear(src, p.name, N, K, p.scheme, dtype)
        tname = f"{p.name}.weight"
        W = src.get(tname)
        if W.dtype not in SOURCE_DTYPES:
            raise FormatError(f"{src.where(tname)}: tensor '{tname}' is {str(W.dtype).removeprefix('torch.')}; "
                              f"quantize= needs a bf16, fp16 or fp32 checkpoint")
        if tuple(W.shape) != (N, K):
            raise FormatError(f"{src.where(tname)}: tensor '{tname}' has shape {list(W.shape)}, expected [{N}, {K}] "
                              f"(from config.json)")
        w = quantize_weight(W, self.spec, f"{src.where(tname)}: tensor '{tname}'")
        del W
        if not isinstance(w, Fp8Weight) and w.scales.dtype != dtype:
            w.scales = w.scales.to(dtype)  # scales in the model dtype, as a quantized checkpoint holds them
        return w, None


def plan(model, cfg, fmt: Format | None, spec: Spec | None) -> QuantLoad | None:
    """Decide which of `model`'s linears are quantized and swap each for a placeholder on the meta
    device (so the 16-bit loader no longer expects its `.weight`). None: nothing is quantized."""
    if fmt is None and spec is None:
        return None
    if fmt is not None and spec is not None:
        raise FormatError(f"{fmt.source}: the checkpoint is already quantized ({fmt.method}); quantize= applies to "
                          f"16-bit checkpoints")
    head = cfg.head_name.removesuffix(".weight")
    if fmt is not None and fmt.method == "compressed-tensors" and not cfg.tie_word_embeddings \
            and fmt.module(head) is not None:  # (GPTQ says so with lm_head: true, refused by its parser)
        raise FormatError(f"{fmt.source}: quantization_config quantizes the head '{head}'; trikern keeps the "
                          f"head in the model dtype (add it to 'ignore')")
    groups: dict[str, list[Piece]] = {}
    shapes = {name: tuple(t.shape) for name, t in model.checkpoint_state().items()}
    for local, (pname, _rows) in model.checkpoint_pieces().items():
        if not local.startswith("layers.") or not local.endswith("_proj.weight"):
            continue
        name = f"{cfg.prefix}.{local.removesuffix('.weight')}"
        groups.setdefault(pname.removesuffix(".weight"), []).append(Piece(name, shapes[local]))
    load = QuantLoad({}, fmt, spec)
    for path, pieces in groups.items():
        if fmt is not None:
            for p in pieces:
                p.scheme = fmt.module(p.name)
            quantized = [p.scheme is not None for p in pieces]
            if not any(quantized):
                continue
            if not all(quantized):
                yes = next(p.name for p in pieces if p.scheme is not None)
                no = next(p.name for p in pieces if p.scheme is None)
                raise FormatError(f"{fmt.source}: quantization_config quantizes '{yes}' but not '{no}'; trikern "
                                  f"fuses them into one weight, so both must be quantized or neither")
            for p in pieces:
                req, opt = fmt.tensor_names(p.name, p.scheme)
                load.required.update(dict.fromkeys(req, path))
                load.optional.update(dict.fromkeys(opt, path))
        else:
            load.required.update({f"{p.name}.weight": path for p in pieces})
        load.modules[path] = pieces
        N = sum(p.shape[0] for p in pieces)
        K = pieces[0].shape[1]
        placeholder = Fp8Weight(torch.empty(N, K, dtype=torch.float8_e4m3fn, device="meta"),
                                torch.empty(N, device="meta"))
        model.set_submodule(path, QuantLinear(placeholder, backend=model.backend))
    return load if load.modules else None


class Tensors:
    """Checkpoint tensors by name from their files (kept open), read onto `device`; `where(name)`
    is the file for error messages."""

    def __init__(self, sources: dict[str, Path], device):
        self.sources, self.device, self.handles, self.read_bytes = sources, device, {}, 0

    def has(self, name: str) -> bool:
        return name in self.sources

    def where(self, name: str) -> str:
        return str(self.sources.get(name, "<checkpoint>"))

    def get(self, name: str) -> torch.Tensor:
        if name not in self.sources:
            raise FormatError(f"{self.where(name)}: missing tensor '{name}'")
        f = self.sources[name]
        h = self.handles.get(f)
        if h is None:
            h = self.handles[f] = _safe_open(f, self.device)
        try:
            t = h.get_tensor(name)
        except Exception as e:  # noqa: BLE001 - safetensors raises several types
            raise FormatError(f"{f}: cannot read tensor '{name}': {e}") from None
        self.read_bytes += t.numel() * t.element_size()
        return t

    def nbytes(self, names) -> int:
        total = 0
        for name in names:
            f = self.sources[name]
            h = self.handles.get(f) or self.handles.setdefault(f, _safe_open(f, self.device))
            sl = h.get_slice(name)
            total += math.prod(sl.get_shape()) * _DTYPE_BYTES.get(sl.get_dtype(), 2)
        return total

    def close(self):
        for h in self.handles.values():
            h.__exit__(None, None, None)
        self.handles.clear()


_DTYPE_BYTES = {"F8_E4M3": 1, "F8_E5M2": 1, "U8": 1, "I8": 1, "BF16": 2, "F16": 2, "I16": 2, "F32": 4, "I32": 4,
                "I64": 8, "F64": 8}


def _safe_open(f: Path, device):
    from safetensors import safe_open  # noqa: PLC0415

    try:
        h = safe_open(str(f), framework="pt", device=str(device))
        return h.__enter__()
    except Exception as e:  # noqa: BLE001
        raise FormatError(f"{f}: not a readable safetensors file (truncated or corrupt?): {e}") from None


def _same_perm(perms, pieces, src):
    """The input permutation of a fused weight: its pieces read the same input, so an act-order
    permutation must be the same for each (GPTQ orders q/k/v by the same activation statistics)."""
    first = perms[0]
    for p, piece in zip(perms[1:], pieces[1:]):
        same = (p is None and first is None) or (p is not None and first is not None and torch.equal(p, first))
        if not same:
            t = f"{piece.name}.g_idx" if src.has(f"{piece.name}.g_idx") else f"{piece.name}.weight_g_idx"
            raise FormatError(f"{src.where(t)}: tensor '{t}' orders the input columns differently from "
                              f"'{pieces[0].name}'; trikern fuses these weights and needs one input order")
    return first


# The model's layer linears (fused as the model holds them) that `quantize=` quantizes.
MODEL_LINEARS = ("self_attn.qkv_proj", "self_attn.o_proj", "mlp.gate_up_proj", "mlp.down_proj")


def quantize_model(model, spec: Spec):
    """Quantize a built model's layer linears in place, one at a time (each 16-bit weight is freed
    as its QuantLinear replaces it): for weights that are already in memory, as the synthetic bench's
    random ones are. The same linears and layouts as a `quantize=` load: a fused weight quantized
    whole equals its pieces quantized and stacked, since every row is quantized on its own and the
    pieces share K (so `group_for` picks one group size)."""
    dtype = model.embed_tokens.weight.dtype
    for i, layer in enumerate(model.layers):
        for name in MODEL_LINEARS:
            lin = layer.get_submodule(name)
            if isinstance(lin, QuantLinear):
                continue
            w = quantize_weight(lin.weight.detach(), spec, f"layers.{i}.{name}.weight")
            if not isinstance(w, Fp8Weight) and w.scales.dtype != dtype:
                w.scales = w.scales.to(dtype)
            layer.set_submodule(name, QuantLinear(w, backend=model.backend))
            del lin
    return model
