"""`trikern quantize`: a 16-bit checkpoint folder -> a quantized one in a standard format, so other
engines (vLLM, transformers) load it too.

Default format: compressed-tensors (pack-quantized int4 W4A16, or float-quantized fp8 with a scale
per output channel): the one format both kinds share, and what llm-compressor writes. GPTQ (v1
zero points, as GPTQModel saves) is available for int4.

Tensor by tensor, shard by shard: each source shard becomes one output shard of the same name (the
quantized layer linears in the format's tensors, everything else copied as it is), so the peak is
one output shard plus one source tensor. config.json gets the `quantization_config`; the tokenizer
files, the draft LoRA folder and every other non-weight file are copied. The whole folder is
written into a temporary folder beside DST and renamed into place at the end: DST is either absent
or complete.

With a calibration text, the linears are quantized by GPTQ (quant/calibrate.py) instead of round to
nearest: the model is loaded whole in fp32 (the peak is then that copy; two with `tune_epochs`,
whose distillation needs the unquantized model beside the quantized one), run once over the
text's tokens, and each fused weight's GPTQ result is cut back into the checkpoint's pieces (rows
are quantized independently, so q / k / v each get their own rows, scales and zero points); the
shards are then written as without it. fp8 GPTQ keeps RTN's per-row scale and writes the same
float-quantized tensors (loaders need nothing new). `sequential` re-measures the Hessians layer by
layer on the quantized layers' outputs; `search_ranges` searches each int4 group's range and zero
point; `tune_epochs` then tunes the int4 group scales by distillation (quant/tune.py: codes and zero
points kept, so the format is unchanged); `act_order` quantizes the columns in order of decreasing
input energy. For int4 its groups are runs of that order: GPTQ format only, written as AutoGPTQ /
GPTQModel write desc_act (qweight rows in the original column order, g_idx the group of each
column); compressed-tensors (0.20) has no such groups: it removed actorder "group" and its g_idx,
and its actorder "weight" keeps the groups in column order, which is another algorithm. fp8 has no
groups, so its act-order columns simply go back in place (compressed-tensors holds them).
"""
from __future__ import annotations

import contextlib
import copy
import json
import os
import re
import shutil
import tempfile
from collections import Counter
from pathlib import Path

import torch

from ..config import ModelConfig
from . import compressed, gptq
from .common import FormatError, Spec, linear_names, quantize_weight

WEIGHTS = "model.safetensors"
INDEX = "model.safetensors.index.json"
FORMATS = ("compressed-tensors", "gptq")


def quantize_checkpoint(src, dst, spec: Spec, fmt: str = "compressed-tensors", overwrite: bool = False,
                        progress: bool = True, calibration=None, calibration_tokens: int = 8192,
                        seq_len: int = 512, sequential: bool = False, act_order: bool = False,
                        search_ranges: bool = False, tune_epochs: int = 0) -> Path:
    """Write the quantized copy of checkpoint folder `src` to `dst`; returns `dst`. `calibration`: a
    text file whose first `calibration_tokens` tokens (windows of `seq_len`) calibrate GPTQ, with
    calibrate.gptq_quantize_model's `sequential`, `act_order` (GPTQ format only) and `search_ranges`
    (its clip_search); `tune_epochs`: then that many epochs of tune.tune_scales over the same windows
    (int4)."""
    src, dst = Path(src), Path(dst)
    if fmt not in FORMATS:
        raise ValueError(f"format={fmt!r}: expected one of {', '.join(FORMATS)}")
    if fmt == "gptq" and spec.weights != "int4":
        raise ValueError("format 'gptq' holds int4 weights only; use compressed-tensors for fp8")
    if tune_epochs < 0:
        raise ValueError(f"--tune-scales {tune_epochs}: expected a number of epochs >= 0")
    if tune_epochs and spec.weights != "int4":
        raise ValueError("--tune-scales: tunes int4 group scales; fp8 has none to tune")
    for flag, on in (("--act-order", act_order), ("--sequential", sequential), ("--search-ranges", search_ranges),
                     ("--tune-scales", tune_epochs > 0)):
        if on and calibration is None:
            raise ValueError(f"{flag}: a GPTQ option; it needs --calibration FILE (without it the weights are "
                             f"rounded to nearest)")
    if act_order and fmt != "gptq" and spec.weights == "int4":
        raise ValueError(f"--act-order: format {fmt!r} cannot hold act-order groups (compressed-tensors removed "
                         f"actorder 'group' and its weight_g_idx); add --format gptq")
    if calibration is not None and not Path(calibration).is_file():
        raise FileNotFoundError(f"--calibration {calibration}: file not found")
    if src.is_file() and src.name == "config.json":
        src = src.parent
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src}: not a checkpoint folder (no config.json)")
    if dst.exists() and not overwrite:
        raise ValueError(f"{dst}: already exists (pass --overwrite to replace it)")
    if dst.resolve() == src.resolve():
        raise ValueError(f"{dst}: is the source folder; write the quantized checkpoint elsewhere")
    raw = json.loads((src / "config.json").read_text())
    if "quantization_config" in raw:
        raise ValueError(f"{src / 'config.json'}: the checkpoint is already quantized "
                         f"({raw['quantization_config'].get('quant_method', '?')})")
    cfg = ModelConfig.from_dict(raw, str(src / "config.json"))
    linears = set(linear_names(cfg.prefix, cfg.num_hidden_layers))
    shards = _shards(src)
    done = None if calibration is None else _gptq_weights(src, cfg, spec, Path(calibration), calibration_tokens,
                                                          seq_len, sequential, act_order, search_ranges,
                                                          tune_epochs, progress)

    dst.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.tmp-"))
    try:
        groups = _write_weights(src, tmp, shards, linears, spec, fmt, progress, done)
        missing = sorted(linears - set(groups))
        if missing:
            raise FormatError(f"{src}: no weight for linear(s) {', '.join(missing[:3])}"
                              f"{' ...' if len(missing) > 3 else ''}")
        raw["quantization_config"] = _config(cfg, spec, fmt, groups, act_order)
        (tmp / "config.json").write_text(json.dumps(raw, indent=2, sort_keys=True) + "\n")
        _copy_others(src, tmp)
        _publish_modes(tmp)
        _replace(tmp, dst)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return dst


def _shards(src: Path) -> dict[str, list[str]] | None:
    """Shard file -> its tensors (from the index), or None for a single model.safetensors."""
    index = src / INDEX
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map")
        if not isinstance(weight_map, dict) or not weight_map:
            raise FormatError(f"{index}: no 'weight_map' object naming the shard of each tensor")
        out: dict[str, list[str]] = {}
        for name, shard in weight_map.items():
            out.setdefault(shard, []).append(name)
        return out
    if not (src / WEIGHTS).is_file():
        raise FileNotFoundError(f"{src}: no weights file: neither {WEIGHTS} nor {INDEX}")
    return None


def _gptq_weights(src: Path, cfg: ModelConfig, spec: Spec, text_file: Path, tokens: int, seq_len: int,
                  sequential: bool = False, act_order: bool = False, search_ranges: bool = False,
                  tune_epochs: int = 0, progress: bool = False) -> dict:
    """Checkpoint module name (with prefix) -> (its GPTQ Int4Weight / Fp8Weight, its act-order column
    permutation or None), from one calibration pass (one per layer with `sequential`)."""
    from ..kernels.qweight import Fp8Weight, Int4Weight  # noqa: PLC0415
    from ..loading import load_model  # noqa: PLC0415
    from ..tokenizer import Tokenizer  # noqa: PLC0415
    from .calibrate import gptq_quantize_model  # noqa: PLC0415
    from .tune import tune_scales  # noqa: PLC0415

    try:
        text = text_file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"--calibration {text_file}: cannot read it as UTF-8 text ({e})") from None
    ids = Tokenizer.from_dir(src).encode(text)[:tokens]
    T = min(seq_len, cfg.max_position_embeddings)
    if len(ids) < T:
        raise ValueError(f"--calibration {text_file}: {len(ids)} tokens; GPTQ needs at least one window of {T}")
    windows = torch.tensor(ids[: len(ids) // T * T], dtype=torch.long).view(-1, T)
    # fp32 for the calibration pass (exact Hessians on any CPU); scales in the checkpoint's dtype, as
    # round-to-nearest export writes them.
    model = load_model(src, device="cpu", dtype="fp32", lora=False, progress=False)
    stored = str(cfg.raw.get("torch_dtype") or cfg.raw.get("dtype") or "bfloat16").removeprefix("torch.")
    scale_dtype = {"float16": torch.float16, "float32": torch.float32}.get(stored, torch.bfloat16)
    pieces = model.checkpoint_pieces()  # before the fused linears are replaced
    teacher = copy.deepcopy(model) if tune_epochs else None  # the 16-bit model the scales learn from
    gptq_quantize_model(model, spec, windows, scale_dtype=scale_dtype, sequential=sequential, act_order=act_order,
                        clip_search=search_ranges)
    if teacher is not None:
        tune_scales(model, teacher, windows, epochs=tune_epochs, progress=progress)
        del teacher
    out = {}
    for local, (pname, rows) in pieces.items():
        if not (local.startswith("layers.") and local.endswith("_proj.weight")):
            continue
        lin = model.get_submodule(pname.removesuffix(".weight"))
        w, r = lin.qweight, rows or slice(None)
        # The pieces of a fused weight read one input: one permutation, each piece's g_idx the same.
        # Every row is quantized on its own (fp8: its own scale), so cutting rows is exact.
        piece = (Fp8Weight(w.weight[r], w.scale[r]) if isinstance(w, Fp8Weight) else
                 Int4Weight(w.packed[r], w.scales[r], None if w.zeros is None else w.zeros[r], w.group))
        out[f"{cfg.prefix}.{local.removesuffix('.weight')}"] = (piece, lin.perm)
    return out


def _write_weights(src, tmp, shards, linears, spec, fmt, progress, done=None) -> dict[str, int | None]:
    """Write every shard; returns linear module -> the group size it got (None for fp8). `done`:
    module -> its already quantized weight and act-order permutation (GPTQ), used instead of
    quantizing the tensor."""
    from safetensors import safe_open  # noqa: PLC0415
    from safetensors.torch import save_file  # noqa: PLC0415
    from tqdm.auto import tqdm  # noqa: PLC0415

    files = [WEIGHTS] if shards is None else list(shards)
    total = sum((src / f).stat().st_size for f in files)
    groups: dict[str, int | None] = {}
    weight_map, size = {}, 0
    with tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, disable=not progress,
              desc=f"quantizing {src.name} ({spec.weights})") as bar:
        for shard in files:
            out = {}
            with safe_open(str(src / shard), framework="pt", device="cpu") as h:
                names = list(h.keys()) if shards is None else shards[shard]
                for name in names:
                    t = h.get_tensor(name)
                    nbytes = t.numel() * t.element_size()
                    module = name.removesuffix(".weight")
                    if name.endswith(".weight") and module in linears:
                        where = f"{src / shard}: tensor '{name}'"
                        if t.dtype not in (torch.bfloat16, torch.float16, torch.float32):
                            raise FormatError(f"{where} is {str(t.dtype).removeprefix('torch.')}; expected a "
                                              f"bf16, fp16 or fp32 weight")
                        w, perm = done[module] if done is not None else (quantize_weight(t, spec, where), None)
                        if tuple(w.shape) != tuple(t.shape):
                            raise FormatError(f"{where} has shape {list(t.shape)}; the model built from "
                                              f"config.json gives {list(w.shape)}")
                        groups[module] = getattr(w, "group", None)
                        if perm is not None and fmt != "gptq":  # never silently drop the column order
                            raise ValueError(f"{where}: an act-order weight needs format 'gptq'")
                        out.update(gptq.write_linear(module, w, perm) if fmt == "gptq" else
                                   compressed.write_linear(module, w))
                    else:
                        out[name] = t
                    del t
                    bar.update(nbytes)
            out = {k: v.contiguous() for k, v in out.items()}
            save_file(out, str(tmp / shard), metadata={"format": "pt"})
            size += sum(v.numel() * v.element_size() for v in out.values())
            weight_map.update(dict.fromkeys(out, shard))
            del out
    if shards is not None:
        (tmp / INDEX).write_text(json.dumps({"metadata": {"total_size": size}, "weight_map": weight_map},
                                            indent=2, sort_keys=True) + "\n")
    return groups


def _config(cfg: ModelConfig, spec: Spec, fmt: str, groups: dict[str, int | None], act_order: bool = False) -> dict:
    """The quantization_config; weights whose K the asked group size does not divide got a smaller
    one (common.group_for), which the config records per module kind."""
    counts = Counter(groups.values())
    main = counts.most_common(1)[0][0]
    kinds: dict[str, set] = {}  # module kind (self_attn.q_proj, ...) -> group sizes it got
    for module, g in groups.items():
        kinds.setdefault(module.split(".", 3)[3], set()).add(g)
    others: dict[int, list[str]] = {}
    for module, g in sorted(groups.items()):
        if g == main:
            continue
        kind = module.split(".", 3)[3]
        pattern = (f".*\\.{re.escape(kind)}$" if len(kinds[kind]) == 1 else f"^{re.escape(module)}$")
        if pattern not in others.setdefault(g, []):
            others[g].append(pattern)
    if fmt == "gptq":
        dynamic = {f"+:{p}": {"group_size": g} for g, ps in others.items() for p in ps}
        return gptq.config(main, spec.symmetric, desc_act=act_order, dynamic=dynamic or None)
    ignore = [] if cfg.tie_word_embeddings else [cfg.head_name.removesuffix(".weight")]
    per_group = {main: ["Linear"], **{g: [f"re:{p}" for p in ps] for g, ps in others.items()}}
    return compressed.config(per_group, spec.weights, spec.symmetric, ignore)


def _copy_others(src: Path, tmp: Path):
    """Everything but the weights and config.json: tokenizer files, generation config, the draft
    LoRA folder (it stays in its own dtype), README, ..."""
    skip_suffixes = (".safetensors", ".bin", ".pt", ".pth")
    for p in src.iterdir():
        if p.name in ("config.json", INDEX) or p.name.startswith(".") or p.suffix in skip_suffixes:
            continue
        if p.is_dir():
            shutil.copytree(p, tmp / p.name)
        elif p.is_file():
            shutil.copy2(p, tmp / p.name)


def _publish_modes(tmp: Path):
    """mkdtemp's folder (and safetensors' files) are private; give them the modes a plain mkdir /
    open would (the umask's)."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    for p in tmp.iterdir():
        if p.is_file():
            os.chmod(p, 0o666 & ~umask)


def _replace(tmp: Path, dst: Path):
    """Move the finished folder into place; an old DST (with --overwrite) is renamed aside first and
    removed only once the new one is there."""
    old = None
    if dst.exists():
        old = Path(tempfile.mkdtemp(dir=dst.parent, prefix=f".{dst.name}.old-"))
        old.rmdir()
        dst.rename(old)
    try:
        tmp.rename(dst)
    except BaseException:
        if old is not None:
            with contextlib.suppress(OSError):
                old.rename(dst)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True) if old.is_dir() else old.unlink()
