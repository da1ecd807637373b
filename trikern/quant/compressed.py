"""compressed-tensors checkpoints (what llm-compressor writes; vLLM and transformers read them) <->
trikern's `Int4Weight` / `Fp8Weight`. Facts checked against the compressed-tensors package (0.20):
its pack_to_int32 / unpack_from_int32, the pack-quantized compressor and its QuantizationConfig.

pack-quantized (weights: type "int", num_bits 4, strategy "group" or "channel"), per linear `<name>`:

    <name>.weight_packed      int32 [N, K / 8]  nibble j of word c is q[n, 8c + j] + 8, q signed -8..7
    <name>.weight_scale       [N, G]            the model dtype (G = 1 for strategy "channel")
    <name>.weight_zero_point  int32 [N / 8, G]  asymmetric only; packed along N (dim 0): nibble j of
                                                word [r, g] is zp[8r + j, g] + 8
    <name>.weight_shape       int64 [2]         [N, K]
    <name>.weight_g_idx       int32 [K]         actorder "group" (alias "dynamic") only: the group of
                                                each column, as GPTQ's g_idx (packed columns in the
                                                original order); required with it, read where present
    W = (q - zp) * scale = (u - z) * scale with the stored nibbles u = q + 8, z = zp + 8: the packed
    words are trikern's `Int4Weight.packed` as they are, z its zero points (8 when symmetric).

float-quantized (older) / naive-quantized (0.20's name) fp8 (weights: type "float", num_bits 8,
strategy "channel" or "tensor"):

    <name>.weight        float8_e4m3fn [N, K]
    <name>.weight_scale  [N, 1] (channel) or [1] (tensor);  W = weight * scale

`quantization_config`: quant_method "compressed-tensors", quantization_status "compressed",
config_groups {name: {targets, weights, input_activations, format}}, format, ignore. A module's
scheme is the group whose targets match it, exact names first, then "re:" regexes (re.match), then
the class name "Linear" (every decoder linear and the head are Linear); `ignore` entries (names or
regexes) exclude. Dynamic activation quantization (FP8_DYNAMIC) stores nothing and is not applied:
trikern keeps activations 16-bit. Transforms, sparsity, static activation scales and KV-cache
quantization change the math and are refused.

Act order: 0.20 removed actorder "group" (its validator refuses "group", "dynamic" and true; only
older llm-compressor checkpoints have it, read here); "weight" ("static") reorders GPTQ's columns
during calibration only, groups staying in column order, so its tensors are the plain layout.
trikern's own act-order GPTQ has groups in act order, which 0.20 cannot express: `trikern quantize
--act-order` writes the GPTQ format.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import torch

from ..kernels.qweight import Fp8Weight, Int4Weight, QuantWeight, pack_int4, unpack_int4
from .common import FormatError, checked, int4_from_groups, scale_dtype

INT4_FORMATS = ("pack-quantized",)
FP8_FORMATS = ("float-quantized", "naive-quantized")


@dataclass(frozen=True)
class Scheme:
    """One config group's weight quantization, as trikern reads it."""
    weights: str  # "int4" | "fp8"
    group: int | None  # int4: columns per scale (None: strategy "channel", one group per row)
    symmetric: bool
    strategy: str
    actorder: bool = False


@dataclass(frozen=True)
class CtConfig:
    groups: dict  # group name -> (targets, Scheme)
    ignore: tuple

    def module(self, name: str) -> Scheme | None:
        """The scheme of the Linear module `name` (full name), or None when it is not quantized."""
        if any(_matches(name, t) for t in self.ignore):
            return None
        exact, regex, cls = [], [], []
        for targets, scheme in self.groups.values():
            for t in targets:
                if t == name:
                    exact.append((t, scheme))
                elif t.startswith("re:") and re.match(t[3:], name):
                    regex.append((t, scheme))
                elif t == "Linear":
                    cls.append((t, scheme))
        ranked = exact + sorted(regex, key=lambda ts: ts[0]) + cls
        return ranked[0][1] if ranked else None


def parse_config(q: dict, source: str) -> CtConfig:
    def bad(key, why):
        raise FormatError(f"{source}: quantization_config.{key}: {why}")

    status = q.get("quantization_status", "compressed")
    if status != "compressed":
        bad("quantization_status", f"{status!r}: only 'compressed' checkpoints hold packed weights")
    if q.get("transform_config"):
        bad("transform_config", "rotations / transforms are not supported")
    sparsity = q.get("sparsity_config") or {}
    if sparsity and sparsity.get("format", "dense") != "dense":
        bad("sparsity_config", f"sparse format {sparsity.get('format')!r} is not supported")
    if q.get("kv_cache_scheme"):
        bad("kv_cache_scheme", "KV-cache quantization is not supported")
    top_format = q.get("format")
    groups = q.get("config_groups")
    if not isinstance(groups, dict) or not groups:
        bad("config_groups", "missing or empty")
    out = {}
    for gname, g in groups.items():
        key = f"config_groups.{gname}"
        if not isinstance(g, dict):
            bad(key, "expected an object")
        targets = g.get("targets")
        if isinstance(targets, str):
            targets = [targets]
        if not isinstance(targets, list) or not targets or not all(isinstance(t, str) for t in targets):
            bad(f"{key}.targets", "expected a list of module names, 're:' regexes or 'Linear'")
        for t in targets:
            if not (t == "Linear" or t.startswith("re:") or "." in t or t in ("lm_head", "diffusion_head")):
                bad(f"{key}.targets", f"target {t!r}: trikern quantizes Linear modules only (targets are 'Linear', "
                    f"module names or 're:' regexes)")
            if t.startswith("re:"):
                try:
                    re.compile(t[3:])
                except re.error as e:
                    bad(f"{key}.targets", f"bad regex {t!r}: {e}")
        act = g.get("input_activations")
        if act and not act.get("dynamic", False):
            bad(f"{key}.input_activations", "static activation quantization is not supported (weight-only, or "
                "dynamic activation schemes whose weights trikern reads alone)")
        if g.get("output_activations"):
            bad(f"{key}.output_activations", "output quantization is not supported")
        w = g.get("weights")
        if not isinstance(w, dict):
            bad(f"{key}.weights", "missing: trikern reads weight quantization")
        fmt = g.get("format") or top_format
        out[gname] = (targets, _scheme(w, fmt, f"{source}: quantization_config.{key}"))
    ignore = q.get("ignore") or []
    if not isinstance(ignore, list) or not all(isinstance(t, str) for t in ignore):
        bad("ignore", "expected a list of module names or 're:' regexes")
    return CtConfig(out, tuple(ignore))


def _scheme(w: dict, fmt, where: str) -> Scheme:
    typ, bits, strategy = w.get("type", "int"), w.get("num_bits"), w.get("strategy")
    sym = w.get("symmetric", True)
    if w.get("dynamic", False):
        raise FormatError(f"{where}.weights.dynamic: dynamic weight quantization is not a stored format")
    actorder = w.get("actorder") in ("group", "dynamic", True)
    if typ == "int" and bits == 4:
        if fmt not in INT4_FORMATS:
            raise FormatError(f"{where}.format: {fmt!r}; int4 weights are read in format 'pack-quantized'")
        if strategy == "group":
            g = w.get("group_size")
            if not isinstance(g, int) or g <= 0:
                raise FormatError(f"{where}.weights.group_size: {g!r}; expected a positive integer")
            return Scheme("int4", g, bool(sym), strategy, actorder)
        if strategy == "channel":
            return Scheme("int4", None, bool(sym), strategy)
        raise FormatError(f"{where}.weights.strategy: {strategy!r}; int4 weights are read with strategy 'group' "
                          f"or 'channel'")
    if typ == "float" and bits == 8:
        if fmt not in FP8_FORMATS:
            raise FormatError(f"{where}.format: {fmt!r}; fp8 weights are read in format 'float-quantized' or "
                              f"'naive-quantized'")
        if strategy not in ("channel", "tensor"):
            raise FormatError(f"{where}.weights.strategy: {strategy!r}; fp8 weights are read with strategy "
                              f"'channel' or 'tensor' (block-wise scales are not supported)")
        if not sym:
            raise FormatError(f"{where}.weights.symmetric: fp8 with zero points is not supported")
        return Scheme("fp8", None, True, strategy)
    raise FormatError(f"{where}.weights: type {typ!r} with num_bits {bits!r} is not supported (int 4-bit "
                      f"pack-quantized and float 8-bit are)")


def tensor_names(name: str, s: Scheme) -> tuple[list[str], list[str]]:
    """(required, optional) checkpoint tensors of a quantized linear."""
    if s.weights == "fp8":
        return [f"{name}.weight", f"{name}.weight_scale"], []
    req = [f"{name}.weight_packed", f"{name}.weight_scale", f"{name}.weight_shape"]
    if not s.symmetric:
        req.append(f"{name}.weight_zero_point")
    return req, [f"{name}.weight_g_idx"]


def read_linear(src, name: str, N: int, K: int, s: Scheme, model_dtype: torch.dtype):
    """(QuantWeight, perm or None) of linear `name` [N, K] (see gptq.read_linear for `src`)."""
    if s.weights == "fp8":
        w = checked(src, f"{name}.weight", (torch.float8_e4m3fn,), (N, K), f"N={N} x K={K}")
        scale_shape = (N, 1) if s.strategy == "channel" else None
        sc = checked(src, f"{name}.weight_scale", (torch.float32, torch.bfloat16, torch.float16), scale_shape,
                     f"one scale per output row, N={N}")
        if s.strategy == "tensor":
            if sc.numel() != 1:
                raise FormatError(f"{src.where(name + '.weight_scale')}: tensor '{name}.weight_scale' has shape "
                                  f"{list(sc.shape)}; strategy 'tensor' stores one scale")
            sc = sc.reshape(1).expand(N)
        return Fp8Weight(w, sc.float().reshape(N).contiguous()), None
    shape = checked(src, f"{name}.weight_shape", (torch.int64, torch.int32), (2,), "[N, K]")
    if shape.tolist() != [N, K]:
        raise FormatError(f"{src.where(name + '.weight_shape')}: tensor '{name}.weight_shape' says {shape.tolist()}; "
                          f"the model config gives [{N}, {K}]")
    if K % 8:
        raise FormatError(f"{src.where(name + '.weight_packed')}: tensor '{name}.weight_packed': K={K} is not a "
                          f"multiple of 8, which trikern's int4 layout needs")
    packed = checked(src, f"{name}.weight_packed", (torch.int32,), (N, K // 8), f"N={N} x K/8={K // 8}")
    group = K if s.group is None else s.group
    G = math.ceil(K / group)
    sc = checked(src, f"{name}.weight_scale", (torch.float16, torch.bfloat16, torch.float32), (N, G),
                 f"N={N} x groups={G}")
    zeros = None
    if not s.symmetric:
        zp = checked(src, f"{name}.weight_zero_point", (torch.int32,), (math.ceil(N / 8), G),
                     f"ceil(N/8)={math.ceil(N / 8)} x groups={G}, packed along N")
        zeros = unpack_int4(zp.T.contiguous())[:, :N].T.contiguous()  # [N, G]
    g_idx = None
    if src.has(f"{name}.weight_g_idx"):
        g_idx = checked(src, f"{name}.weight_g_idx", (torch.int32, torch.int64), (K,), f"K={K}")
    elif s.actorder:
        raise FormatError(f"{src.where(name + '.weight_packed')}: actorder 'group' but tensor '{name}.weight_g_idx' "
                          f"is missing (act order needs each column's group)")
    scales = sc.to(scale_dtype(sc.dtype, model_dtype))
    if g_idx is None and K % group == 0:  # the common case: the packed words are trikern's as they are
        return Int4Weight(packed, scales, zeros, group), None
    if g_idx is None:
        g_idx = torch.arange(K, device=packed.device) // group
    where = f"{src.where(name + '.weight_packed')}: tensor '{name}.weight_g_idx'"
    return int4_from_groups(unpack_int4(packed), scales, zeros, g_idx, where)


def write_linear(name: str, w: QuantWeight) -> dict[str, torch.Tensor]:
    """The compressed-tensors tensors of `w` (int4: pack-quantized; fp8: float-quantized)."""
    if isinstance(w, Fp8Weight):
        return {f"{name}.weight": w.weight, f"{name}.weight_scale": w.scale.reshape(-1, 1)}
    N, K = w.shape
    out = {f"{name}.weight_packed": w.packed, f"{name}.weight_scale": w.scales,
           f"{name}.weight_shape": torch.tensor([N, K], dtype=torch.int64)}
    if w.zeros is not None:
        z = w.zeros.T.contiguous()  # [G, N]: packed along N
        if N % 8:
            z = torch.cat([z, torch.full((z.shape[0], 8 - N % 8), 8, dtype=z.dtype, device=z.device)], dim=1)
        out[f"{name}.weight_zero_point"] = pack_int4(z).T.contiguous()
    return out


def config(groups: dict[int, list[str]] | None, weights: str, symmetric: bool, ignore: list[str]) -> dict:
    """A `quantization_config` as llm-compressor writes it. int4: `groups` maps each group size to
    its targets (["Linear"] when one size fits every weight; else 're:' regexes per module kind);
    fp8: per-channel scales for ["Linear"]. `ignore` lists the Linear modules left unquantized."""
    if weights == "fp8":
        fmt = "float-quantized"
        cg = {"group_0": _group(["Linear"], {"num_bits": 8, "type": "float", "strategy": "channel",
                                              "symmetric": True, "group_size": None, "dynamic": False}, fmt)}
    else:
        fmt = "pack-quantized"
        cg = {f"group_{i}": _group(targets, {"num_bits": 4, "type": "int", "strategy": "group", "group_size": g,
                                             "symmetric": symmetric, "dynamic": False}, fmt)
              for i, (g, targets) in enumerate(sorted(groups.items(), key=lambda gt: gt[1] != ["Linear"]))}
    return {"quant_method": "compressed-tensors", "format": fmt, "quantization_status": "compressed",
            "config_groups": cg, "ignore": ignore, "kv_cache_scheme": None, "global_compression_ratio": None,
            "sparsity_config": {}, "transform_config": {}}


def _group(targets, weights, fmt):
    return {"targets": targets, "weights": weights, "input_activations": None, "output_activations": None,
            "format": fmt}


def _matches(name: str, target: str) -> bool:
    return bool(re.match(target[3:], name)) if target.startswith("re:") else target == name

