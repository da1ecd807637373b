"""Checkpoint loading: HF-format safetensors folders -> `trikern.model.Transformer`.

A checkpoint folder holds `config.json` and either `model.safetensors` or shards listed in
`model.safetensors.index.json`. Tensor names are `encoder.*` + `diffusion_head.weight` (NLD) or
`model.*` + `lm_head.weight` (Llama / Mistral / Ministral; no head when embeddings are tied).

The model is built on the `meta` device and filled tensor by tensor from memory-mapped files, each
converted to the target dtype on the target device as it is read, so loading never holds a second
copy of the model: at most one tensor is in flight besides the model's own storage. The model's
fused weights (q/k/v as `qkv_proj`, gate/up as `gate_up_proj`; see `trikern.model`) are allocated
once and each checkpoint tensor is copied into its rows as it is read; checkpoints keep the separate
HF tensors, and every check and error names those.

Quantized checkpoints (a `quantization_config` in config.json: GPTQ or compressed-tensors) and
`quantize="int4" | "fp8"` (a 16-bit checkpoint quantized as it is read) go through trikern/quant: it
decides which linears are quantized, names their tensors for the checks here, and reads them.

An optional PEFT LoRA adapter (`linear_spec_lora/` by default: adapter_config.json +
adapter_model.safetensors) on `o_proj` is attached to the attention layers; the model applies it
only on passes called with `lora=True` (the self-speculation draft).

Every problem with the files raises one `CheckpointError` naming the file and the tensor.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import re
from pathlib import Path

import torch

from . import cpu_features
from .config import ModelConfig, inv_freq
from .model import Transformer
from .quant import FormatError, Spec
from .quant import checkpoint as quant_checkpoint

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
LORA_DIR = "linear_spec_lora"
LORA_CONFIG = "adapter_config.json"
LORA_WEIGHTS = "adapter_model.safetensors"
PROGRESS_BYTES = 1 << 30  # show a progress bar by default above this checkpoint size

DISK_DTYPES = {"BF16": torch.bfloat16, "F16": torch.float16, "F32": torch.float32}
TARGET_DTYPES = {
    "bf16": torch.bfloat16, "bfloat16": torch.bfloat16,
    "fp16": torch.float16, "float16": torch.float16, "half": torch.float16,
    "fp32": torch.float32, "float32": torch.float32, "float": torch.float32,
}
# Tensors some HF checkpoints carry that hold nothing trikern needs (old Llama exports stored
# RoPE tables; tied checkpoints sometimes repeat the embedding as the head).
_IGNORED = re.compile(r".*\.rotary_emb\.inv_freq$")


class CheckpointError(ValueError):
    """A checkpoint folder trikern cannot load; the message names the file and the tensor."""


# -- public entry points -------------------------------------------------------------------------
def load_model(path, device=None, dtype=None, backend: str = "auto", lora=None,
               progress: bool | None = None, quantize: str | None = None, group_size: int = 128) -> Transformer:
    """Load the checkpoint folder `path` as a Transformer in eval mode, parameters frozen.

    device: default cuda if available, else cpu. dtype: torch dtype or "bf16" / "fp16" / "fp32";
    default bf16, or fp32 on a CPU without native bf16 (fp16 is refused on CPU: no fast fp16 matmuls
    there). lora: None loads `<path>/linear_spec_lora/` if it exists, True requires it, False skips
    it, a path loads that adapter folder. progress: None shows a bar only for checkpoints over 1 GB.
    quantize: "int4" (symmetric, `group_size` columns per scale) or "fp8" (e4m3, a scale per row)
    quantizes a 16-bit checkpoint's layer linears as they are read; a checkpoint whose config.json
    has a quantization_config (GPTQ, compressed-tensors) loads quantized without it.
    """
    spec = None if quantize is None else Spec(quantize, group_size)
    folder = checkpoint_dir(path)
    device = resolve_device(device)
    dtype = resolve_dtype(dtype, device)
    cfg = ModelConfig.from_file(folder / "config.json")
    lora_dir = _lora_dir(folder, lora)  # a missing adapter fails before the long part
    with torch.device("meta"):
        model = Transformer(cfg, backend=backend)
    with _format_errors():  # swaps the quantized linears out of the 16-bit plan below
        qload = quant_checkpoint.plan(model, cfg, quant_checkpoint.read_format(folder, cfg.raw), spec)
    expected = _expected_tensors(model, cfg)
    sources = _tensor_sources(folder)
    names = expected if qload is None else {
        **expected, **qload.required, **{n: m for n, m in qload.optional.items() if n in sources}}
    _check_names(folder, names, sources, cfg)
    shapes = {name: t.shape for name, t in model.state_dict().items()}
    state = _read_tensors(folder, expected, sources, device, dtype, progress, shapes)
    model.load_state_dict(state, strict=True, assign=True)
    if qload is not None:
        with _format_errors():
            qload.read(model, sources, device, dtype, progress, PROGRESS_BYTES)
    # Non-persistent buffers were built on meta; recompute them where the weights now live.
    model.inv_freq = inv_freq(cfg.rope, cfg.head_dim).to(device)
    model.requires_grad_(False).eval()
    if lora_dir is not None:
        load_lora(model, lora_dir)
    return model


def load_lora(model: Transformer, folder) -> Transformer:
    """Attach the PEFT LoRA adapter in `folder` to every targeted o_proj as (A, B, scale)."""
    folder = Path(folder)
    cfg_file, weights = folder / LORA_CONFIG, folder / LORA_WEIGHTS
    for f in (cfg_file, weights):
        if not f.is_file():
            raise CheckpointError(f"{f}: LoRA adapter file not found")
    acfg = _read_json(cfg_file)
    scale_of = _lora_scale(acfg, cfg_file)
    layers = _check_lora_targets(acfg, cfg_file, model.cfg)
    pairs = _read_lora_tensors(weights, model.cfg)
    for i in sorted(pairs):
        if layers is not None and i not in layers:
            raise CheckpointError(f"{weights}: LoRA tensors for layer {i}, which "
                                  f"{cfg_file.name} does not list in layers_to_transform")
    want = range(model.cfg.num_hidden_layers) if layers is None else sorted(layers)
    ref = model.embed_tokens.weight
    adapters = {}  # checked in full before any layer changes
    for i in want:
        name = f"layers.{i}.self_attn.o_proj"
        if i not in pairs or set(pairs[i]) != {"A", "B"}:
            have = sorted(pairs.get(i, {}))
            raise CheckpointError(f"{weights}: missing LoRA tensor(s) for {name} "
                                  f"(need lora_A and lora_B, found {have or 'none'})")
        a, b = pairs[i]["A"], pairs[i]["B"]
        o = model.layers[i].self_attn.o_proj  # a Linear or a QuantLinear: both say their sizes
        r = a.shape[0]
        if a.dim() != 2 or b.dim() != 2 or a.shape[1] != o.in_features or b.shape != (o.out_features, r):
            raise CheckpointError(
                f"{weights}: LoRA tensors of {name} are mis-shaped: lora_A {tuple(a.shape)}, lora_B "
                f"{tuple(b.shape)}; expected [r, {o.in_features}] and [{o.out_features}, r]")
        adapters[i] = (a.to(ref.device, ref.dtype), b.to(ref.device, ref.dtype), scale_of(r, weights, name))
    for i, lora in adapters.items():
        model.layers[i].self_attn.lora = lora
    return model


def resolve_device(device) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError):  # torch's message does not say which argument
        raise ValueError(f"device={device!r}: expected 'cpu', 'cuda' or 'cuda:N'") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device={str(device)!r}: CUDA is not available on this machine (use device='cpu')")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise ValueError(f"device={str(device)!r}: this machine has {torch.cuda.device_count()} CUDA device(s)")
    return device


def resolve_dtype(dtype, device: torch.device) -> torch.dtype:
    if dtype is None:  # bf16 on GPUs; on a CPU, bf16 only where it computes in bf16 (cpu_features.py)
        return cpu_features.default_dtype()[0] if device.type == "cpu" else torch.bfloat16
    if isinstance(dtype, str):
        if dtype.lower().removeprefix("torch.") not in TARGET_DTYPES:
            raise ValueError(f"dtype={dtype!r}: expected one of bf16, fp16, fp32")
        dtype = TARGET_DTYPES[dtype.lower().removeprefix("torch.")]
    if dtype not in (torch.bfloat16, torch.float16, torch.float32):
        raise ValueError(f"dtype={dtype}: expected torch.bfloat16, torch.float16 or torch.float32")
    if dtype == torch.float16 and device.type == "cpu":
        raise ValueError("dtype=float16 on CPU: CPUs have no fast fp16 matmuls (orders of magnitude "
                         "slower than bf16); use dtype=torch.bfloat16 or torch.float32 on CPU")
    return dtype


# -- checkpoint layout ---------------------------------------------------------------------------
def checkpoint_dir(path) -> Path:
    """The checkpoint folder `path` names: the folder itself, or the folder of its config.json (so
    the tokenizer and the adapter beside it load too). Any other file is refused: it does not say
    which checkpoint is meant."""
    if path is None:
        raise ValueError("load_model: path to a checkpoint folder is required")
    if not isinstance(path, (str, os.PathLike)):
        raise ValueError(f"path={path!r}: expected a checkpoint folder (str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if p.is_file():
        if p.name != "config.json":
            raise CheckpointError(f"{p}: is a file; pass the checkpoint folder ({p.parent}) or its config.json")
        p = p.parent
    if not p.is_dir():
        raise CheckpointError(f"{p}: checkpoint folder not found")
    return p


def _expected_tensors(model: Transformer, cfg: ModelConfig) -> dict[str, tuple[str, slice | None, tuple]]:
    """Checkpoint tensor name -> (parameter name, its rows there or None for all, shape on disk)."""
    pieces, state = model.checkpoint_pieces(), model.checkpoint_state()
    out = {}
    for local, (pname, rows) in pieces.items():
        cname = cfg.head_name if local == "lm_head.weight" else f"{cfg.prefix}.{local}"
        out[cname] = (pname, rows, tuple(state[local].shape))
    return out


def _tensor_sources(folder: Path) -> dict[str, Path]:
    """Tensor name -> the file that holds it, from the index (sharded) or the single file."""
    index, single = folder / INDEX, folder / WEIGHTS
    if index.is_file():
        weight_map = _read_json(index).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise CheckpointError(f"{index}: no 'weight_map' object naming the shard of each tensor")
        shards = {}
        for name, shard in weight_map.items():
            f = folder / shard
            if not f.is_file():
                raise CheckpointError(f"{index}: shard '{shard}' (holding tensor '{name}') does not exist")
            shards.setdefault(f, []).append(name)
        sources = {}
        for f, names in shards.items():
            present = set(_open(f).keys())
            for name in names:
                if name not in present:
                    raise CheckpointError(f"{f}: missing tensor '{name}' (listed for this shard in {INDEX})")
                sources[name] = f
            extra = sorted(present - set(names))
            if extra:
                raise CheckpointError(f"{f}: unexpected tensor(s) not listed in {INDEX}: {_names(extra)}")
        return sources
    if single.is_file():
        return {name: single for name in _open(single).keys()}
    others = sorted(p.name for p in folder.iterdir() if p.suffix in (".safetensors", ".bin", ".pt", ".pth"))
    hint = f" (found {', '.join(others)}; only {WEIGHTS} or a sharded {INDEX} are supported)" if others else ""
    raise CheckpointError(f"{folder}: no weights file: neither {WEIGHTS} nor {INDEX}{hint}")


def _check_names(folder, expected, sources, cfg):
    missing = sorted(set(expected) - set(sources))
    if missing:
        where = folder / (INDEX if (folder / INDEX).is_file() else WEIGHTS)
        raise CheckpointError(f"{where}: missing tensor(s) {_names(missing)}")
    extra = [n for n in sources if n not in expected and not _ignorable(n, cfg)]
    if extra:
        by_file = {}
        for n in sorted(extra):
            by_file.setdefault(sources[n], []).append(n)
        f, names = next(iter(by_file.items()))
        raise CheckpointError(f"{f}: unexpected tensor(s) {_names(names)} (a {cfg.model_type} model "
                              f"uses '{cfg.prefix}.*' and '{cfg.head_name}')")


def _ignorable(name: str, cfg: ModelConfig) -> bool:
    return bool(_IGNORED.match(name)) or (cfg.tie_word_embeddings and name == cfg.head_name)


def _read_tensors(folder, expected, sources, device, dtype, progress, shapes):
    """Read, check and convert every expected tensor; returns parameter name -> tensor. A fused
    parameter (`shapes` gives its full shape) is allocated at its first piece and filled by rows."""
    by_file = {}
    for name in expected:
        by_file.setdefault(sources[name], []).append(name)
    total, meta = 0, {}
    for f, names in by_file.items():
        with _open(f) as h:
            for name in names:
                sl = h.get_slice(name)
                disk, shape = sl.get_dtype(), tuple(sl.get_shape())
                if disk not in DISK_DTYPES:
                    raise CheckpointError(
                        f"{f}: tensor '{name}' is stored as {disk}; trikern loads bf16, fp16 or fp32 "
                        f"weights (a quantized checkpoint needs its quantization_config in config.json)")
                want = expected[name][2]
                if shape != want:
                    raise CheckpointError(f"{f}: tensor '{name}' has shape {list(shape)}, expected {list(want)} "
                                          f"(from config.json)")
                meta[name] = (f, shape, DISK_DTYPES[disk])
                total += math.prod(shape) * DISK_DTYPES[disk].itemsize
    show = progress if progress is not None else total > PROGRESS_BYTES
    bar = _progress_bar(total, show, folder.name)
    state = {}
    try:
        for f, names in by_file.items():
            # safetensors reads straight onto the target device; only CUDA/CPU strings are accepted.
            with _open(f, device) as h:
                for name in names:
                    try:
                        t = h.get_tensor(name)
                    except Exception as e:  # noqa: BLE001 - safetensors raises several types
                        raise CheckpointError(f"{f}: cannot read tensor '{name}': {e}") from None
                    pname, rows, _ = expected[name]
                    if rows is None:
                        state[pname] = t.to(dtype=dtype)
                    else:
                        if pname not in state:  # every row is written: _check_names saw each piece
                            state[pname] = torch.empty(shapes[pname], dtype=dtype, device=device)
                        state[pname][rows].copy_(t)
                    del t
                    bar.update(math.prod(meta[name][1]) * meta[name][2].itemsize)
    finally:
        bar.close()
    return state


@contextlib.contextmanager
def _format_errors():
    """trikern/quant's FormatError (file and tensor named) as this module's CheckpointError."""
    try:
        yield
    except FormatError as e:
        raise CheckpointError(str(e)) from None


class _open:
    """safe_open that turns safetensors' errors (truncated, corrupt) into CheckpointError."""

    def __init__(self, f: Path, device=None):
        from safetensors import safe_open  # noqa: PLC0415

        dev = "cpu" if device is None else str(device)
        try:
            self.h = safe_open(str(f), framework="pt", device=dev)
        except Exception as e:  # noqa: BLE001
            raise CheckpointError(f"{f}: not a readable safetensors file (truncated or corrupt?): {e}") from None
        self.f = f

    def __enter__(self):
        return self.h.__enter__()

    def __exit__(self, *exc):
        return self.h.__exit__(*exc)

    def keys(self):
        with self.h as h:
            return list(h.keys())


def _progress_bar(total: int, show: bool, label: str):
    from tqdm.auto import tqdm  # noqa: PLC0415

    return tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not show,
                desc=f"loading {label}")


def _read_json(f: Path) -> dict:
    try:
        d = json.loads(f.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"{f}: not valid JSON ({e})") from None
    if not isinstance(d, dict):
        raise CheckpointError(f"{f}: expected a JSON object")
    return d


def _names(names: list[str], limit: int = 5) -> str:
    shown = ", ".join(f"'{n}'" for n in names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


# -- PEFT LoRA -----------------------------------------------------------------------------------
# PEFT saves `base_model.model.<module path>.lora_A.weight` (the adapter name, e.g. `.default`,
# is stripped on save but present in in-memory state dicts, so accept both).
_LORA_KEY = re.compile(
    r"^(?:base_model\.model\.)?(?:(?P<prefix>[\w.]+?)\.)?layers\.(?P<layer>\d+)\.(?P<module>[\w.]+?)"
    r"\.lora_(?P<ab>[AB])(?:\.[\w-]+)?\.weight$"
)
_LINEARS = ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
            "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj")


def _lora_dir(folder: Path, lora) -> Path | None:
    if lora is False:
        return None
    if lora is None:
        d = folder / LORA_DIR
        return d if d.is_dir() else None
    if lora is True:
        d = folder / LORA_DIR
        if not d.is_dir():
            raise CheckpointError(f"{d}: LoRA adapter folder not found (lora=True)")
        return d
    d = Path(lora)
    if not d.is_dir():
        raise CheckpointError(f"{d}: LoRA adapter folder not found")
    return d


def _lora_scale(acfg: dict, f: Path):
    if acfg.get("peft_type", "LORA") != "LORA":
        raise CheckpointError(f"{f}: peft_type '{acfg.get('peft_type')}' is not supported (only LORA)")
    for key in ("use_dora",):
        if acfg.get(key):
            raise CheckpointError(f"{f}: '{key}': true is not supported")
    for key in ("rank_pattern", "alpha_pattern"):
        if acfg.get(key):
            raise CheckpointError(f"{f}: per-module '{key}' is not supported")
    if acfg.get("bias", "none") != "none":
        raise CheckpointError(f"{f}: LoRA bias '{acfg['bias']}' is not supported (only 'none')")
    for key in ("r", "lora_alpha"):
        if not isinstance(acfg.get(key), (int, float)) or acfg[key] <= 0:
            raise CheckpointError(f"{f}: missing or invalid '{key}' (a positive number is required)")
    r, alpha, rs = int(acfg["r"]), float(acfg["lora_alpha"]), bool(acfg.get("use_rslora", False))

    def scale_of(rank: int, weights: Path, name: str) -> float:
        if rank != r:
            raise CheckpointError(f"{weights}: LoRA rank of {name} is {rank}, but {f.name} says r={r}")
        return alpha / math.sqrt(r) if rs else alpha / r

    return scale_of


def _check_lora_targets(acfg: dict, f: Path, cfg: ModelConfig) -> set[int] | None:
    """Only o_proj may be targeted. Returns the layers to expect (None: all)."""
    targets = acfg.get("target_modules")
    if isinstance(targets, str):
        if targets == "all-linear":
            bad = [m for m in _LINEARS if m != "self_attn.o_proj"]
        else:
            # PEFT full-matches a string target against each module's path.
            full = [f"{cfg.prefix}.layers.0.{m}" for m in _LINEARS]
            bad = [m for m, n in zip(_LINEARS, full) if m != "self_attn.o_proj" and re.fullmatch(targets, n)]
    elif isinstance(targets, list) and targets:
        bad = [t for t in targets if t.split(".")[-1] != "o_proj"]
    else:
        raise CheckpointError(f"{f}: missing 'target_modules' (expected [\"o_proj\"])")
    if bad:
        raise CheckpointError(f"{f}: target_modules {targets!r} targets {bad}; "
                              f"trikern supports LoRA on o_proj only")
    layers = acfg.get("layers_to_transform")
    if layers is None:
        return None
    layers = {layers} if isinstance(layers, int) else set(layers)
    out = [i for i in layers if not 0 <= i < cfg.num_hidden_layers]
    if out:
        raise CheckpointError(f"{f}: layers_to_transform {sorted(out)} outside the model's "
                              f"{cfg.num_hidden_layers} layers")
    return layers


def _read_lora_tensors(weights: Path, cfg: ModelConfig) -> dict[int, dict[str, torch.Tensor]]:
    """layer -> {"A": tensor, "B": tensor}, on CPU in the file's dtype."""
    pairs: dict[int, dict[str, torch.Tensor]] = {}
    with _open(weights) as h:
        for key in h.keys():
            m = _LORA_KEY.match(key)
            # The wrapper path above the decoder stack varies with the HF class the adapter was
            # trained on (`encoder`, `model`, `model.encoder`): only its last part is checked.
            if not m or m["module"] != "self_attn.o_proj" or (m["prefix"] or "").split(".")[-1] not in ("", cfg.prefix, "model"):
                raise CheckpointError(f"{weights}: unexpected tensor '{key}' (expected PEFT names like "
                                      f"'base_model.model.{cfg.prefix}.layers.0.self_attn.o_proj.lora_A.weight')")
            disk = h.get_slice(key).get_dtype()
            if disk not in DISK_DTYPES:
                raise CheckpointError(f"{weights}: tensor '{key}' is stored as {disk}; expected bf16, fp16 or fp32")
            i = int(m["layer"])
            if i >= cfg.num_hidden_layers:
                raise CheckpointError(f"{weights}: tensor '{key}' names layer {i}; the model has "
                                      f"{cfg.num_hidden_layers} layers")
            try:
                pairs.setdefault(i, {})[m["ab"]] = h.get_tensor(key)
            except Exception as e:  # noqa: BLE001
                raise CheckpointError(f"{weights}: cannot read tensor '{key}': {e}") from None
    if not pairs:
        raise CheckpointError(f"{weights}: no LoRA tensors found")
    return pairs
