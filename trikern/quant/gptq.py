"""GPTQ checkpoints (the AutoGPTQ / GPTQModel / optimum layout) <-> trikern's `Int4Weight`.

Per quantized linear `<name>` (W [N, K]: N outputs, K inputs):

    <name>.qweight  int32 [K / 8, N]   nibble j of word [r, n] is q[n, 8r + j] (packed along K), 0..15
    <name>.qzeros   int32 [G, N / 8]   nibble j of word [g, c] is the zero point of group g, output 8c + j
    <name>.scales   fp16  [G, N]
    <name>.g_idx    int32 [K]          the group of each input column: k // group, or any order (act-order)
    W[n, k] = scales[g_idx[k], n] * (q[n, k] - zero[g_idx[k], n]),  G = ceil(K / group)

Zero points: `checkpoint_format` "gptq" (v1: the default, what AutoGPTQ wrote and GPTQModel still
saves) stores zero - 1, taken off the packed word as a whole (GPTQModel's v2 -> v1 conversion
subtracts 0x11111111 from each int32, its v1 -> v2 adds it back, modulo 2^32); a symmetric int4
zero point is 8, so symmetric v1 words read 0x77777777. "gptq_v2" stores the zero points as they are.

config.json `quantization_config` (or a quantize_config.json beside it): quant_method "gptq",
bits 4, group_size (-1: one group per row), sym, desc_act, checkpoint_format, lm_head, and
GPTQModel's `dynamic` per-module rules ("-:regex": left unquantized; "+:regex" or "regex": these
fields overridden), matched with `re.match` against the module's full name.
Act-order (desc_act with a g_idx that is not k // group) is supported: the columns are permuted into
group order at load (common.int4_from_groups) and the model gathers its input to match; `write_linear`
with the permutation is the inverse (qweight rows back in original column order, g_idx[perm[i]] =
i // group), as AutoGPTQ / GPTQModel write desc_act.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field, replace

import torch

from ..kernels.qweight import Int4Weight, pack_int4, unpack_int4
from .common import FormatError, checked, int4_from_groups, scale_dtype

V1_OFFSET = 0x11111111  # one added to each of the 8 nibbles of a word


@dataclass(frozen=True)
class GptqConfig:
    group: int = 128  # -1: one group per row
    sym: bool = True
    desc_act: bool = False
    v1: bool = True
    dynamic: dict = field(default_factory=dict, compare=False)

    def module(self, name: str) -> "GptqConfig | None":
        """This module's settings, or None where a `dynamic` "-:" rule leaves it unquantized."""
        for pattern, over in self.dynamic.items():
            if pattern.startswith("-:"):
                if re.match(pattern[2:], name):
                    return None
            elif re.match(pattern.removeprefix("+:"), name):
                return replace(self, group=over.get("group_size", self.group), sym=over.get("sym", self.sym),
                               desc_act=over.get("desc_act", self.desc_act), dynamic={})
        return self


def parse_config(q: dict, source: str) -> GptqConfig:
    """The GPTQ `quantization_config` object; every field trikern depends on is checked."""
    def bad(key, why):
        raise FormatError(f"{source}: quantization_config.{key}={q.get(key)!r}: {why}")

    if q.get("bits", 4) != 4:
        bad("bits", "trikern reads 4-bit GPTQ checkpoints only")
    if q.get("lm_head", False):
        bad("lm_head", "a quantized head is not supported (trikern keeps the head in the model dtype)")
    fmt = q.get("checkpoint_format", q.get("format", "gptq"))
    if fmt not in ("gptq", "gptq_v2"):
        raise FormatError(f"{source}: quantization_config.checkpoint_format={fmt!r}: expected 'gptq' (v1) or "
                          f"'gptq_v2' (other GPTQModel formats such as marlin / bitblas are kernel-specific)")
    if q.get("pack_dtype", "int32") not in ("int32", "torch.int32"):
        bad("pack_dtype", "only int32 packing is supported")
    group = q.get("group_size", 128)
    if not isinstance(group, int) or isinstance(group, bool) or (group != -1 and group <= 0):
        bad("group_size", "expected a positive integer or -1")
    for key in ("sym", "desc_act"):
        if not isinstance(q.get(key, key == "sym"), bool):
            bad(key, "expected true or false")
    dynamic = q.get("dynamic") or {}
    if not isinstance(dynamic, dict):
        bad("dynamic", "expected an object of per-module rules")
    for pattern, over in dynamic.items():
        if not isinstance(over, dict):
            raise FormatError(f"{source}: quantization_config.dynamic[{pattern!r}]: expected an object")
        if over.get("bits", 4) != 4:
            raise FormatError(f"{source}: quantization_config.dynamic[{pattern!r}] sets bits={over['bits']}; "
                              f"trikern reads 4-bit weights only")
        try:
            re.compile(pattern.removeprefix("-:").removeprefix("+:"))
        except re.error as e:
            raise FormatError(f"{source}: quantization_config.dynamic: bad regex {pattern!r}: {e}") from None
    return GptqConfig(group=group, sym=q.get("sym", True), desc_act=q.get("desc_act", False), v1=fmt == "gptq",
                      dynamic=dynamic)


def tensor_names(name: str) -> tuple[list[str], list[str]]:
    """(required, optional) checkpoint tensors of a quantized linear."""
    return [f"{name}.qweight", f"{name}.qzeros", f"{name}.scales"], [f"{name}.g_idx"]


def read_linear(src, name: str, N: int, K: int, cfg: GptqConfig, model_dtype: torch.dtype):
    """(Int4Weight, perm or None) of linear `name` [N, K]; `src.get(tensor)` reads a tensor and
    `src.where(tensor)` names its file for errors."""
    group = K if cfg.group == -1 else cfg.group
    G = math.ceil(K / group)
    qw = checked(src, f"{name}.qweight", (torch.int32,), (K // 8, N), f"K/8={K // 8} x N={N}", K % 8 == 0)
    qz = checked(src, f"{name}.qzeros", (torch.int32,), (G, math.ceil(N / 8)),
                 f"groups ceil(K/group)={G} x ceil(N/8)={math.ceil(N / 8)}")
    sc = checked(src, f"{name}.scales", (torch.float16, torch.bfloat16, torch.float32), (G, N), f"groups={G} x N={N}")
    g_idx = None
    if src.has(f"{name}.g_idx"):
        # The data decides the column order, whatever desc_act says (static groups keep k // group).
        g_idx = checked(src, f"{name}.g_idx", (torch.int32, torch.int64), (K,), f"K={K}")
    elif cfg.desc_act:
        raise FormatError(f"{src.where(name + '.qzeros')}: desc_act=true but tensor '{name}.g_idx' is missing "
                          f"(act-order needs each column's group)")
    q = unpack_int4(qw.T.contiguous())  # [N, K]: word [r, n] holds columns 8r .. 8r + 7 of row n
    words = qz.to(torch.int64)
    if cfg.v1:
        words = (words + V1_OFFSET) & 0xFFFFFFFF
    zeros = unpack_int4(_as_int32(words)).T[:N].contiguous()  # [N, G]
    scales = sc.T.contiguous().to(scale_dtype(sc.dtype, model_dtype))
    if g_idx is None:
        g_idx = torch.arange(K, device=q.device) // group
    if bool((zeros == 8).all()):
        zeros = None
    where = f"{src.where(name + '.g_idx')}: tensor '{name}.g_idx'" if src.has(f"{name}.g_idx") else \
        f"{src.where(name + '.qweight')}: tensor '{name}.qweight'"
    return int4_from_groups(q, scales, zeros, g_idx, where)


def write_linear(name: str, w: Int4Weight, perm: torch.Tensor | None = None, v1: bool = True,
                 scales_dtype=torch.float16) -> dict[str, torch.Tensor]:
    """The GPTQ tensors of `w` (whose columns are the original columns permuted by `perm`, if given:
    column i of w is column perm[i] of the original weight)."""
    N, K = w.shape
    q = unpack_int4(w.packed)
    g_idx = torch.arange(K, device=q.device, dtype=torch.int32) // w.group
    if perm is not None:
        orig = torch.empty_like(q)
        orig[:, perm] = q
        q = orig
        gi = torch.empty_like(g_idx)
        gi[perm] = g_idx
        g_idx = gi
    zeros = torch.full_like(w.scales, 8, dtype=torch.uint8) if w.zeros is None else w.zeros
    zt = zeros.T.contiguous()  # [G, N]
    if N % 8:
        zt = torch.cat([zt, zt.new_zeros(zt.shape[0], 8 - N % 8)], dim=1)
    qzeros = pack_int4(zt)
    if v1:
        qzeros = _as_int32((qzeros.to(torch.int64) - V1_OFFSET) & 0xFFFFFFFF)
    sc = w.scales.T.contiguous()
    if scales_dtype is not None and torch.equal(sc.to(scales_dtype).to(sc.dtype), sc):
        sc = sc.to(scales_dtype)  # fp16 as GPTQ writes, where that holds the scales exactly
    return {f"{name}.qweight": pack_int4(q).T.contiguous(), f"{name}.qzeros": qzeros,
            f"{name}.scales": sc, f"{name}.g_idx": g_idx}


def config(group: int, sym: bool = True, desc_act: bool = False, v1: bool = True, dynamic: dict | None = None) -> dict:
    """A `quantization_config` as GPTQModel writes it."""
    d = {"quant_method": "gptq", "bits": 4, "group_size": group, "sym": sym, "desc_act": desc_act,
         "checkpoint_format": "gptq" if v1 else "gptq_v2", "pack_dtype": "int32", "lm_head": False,
         "true_sequential": True, "static_groups": False}
    if dynamic:
        d["dynamic"] = dynamic
    return d


def _as_int32(words: torch.Tensor) -> torch.Tensor:
    """Unsigned 32-bit values held in int64 -> the int32 with the same bits."""
    return torch.where(words >= 1 << 31, words - (1 << 32), words).to(torch.int32)

