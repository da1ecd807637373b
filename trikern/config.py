"""Model configuration parsed from a Hugging Face `config.json`.

Supports `nemotron_labs_diffusion` (tri-mode) and the AR-only Llama / Mistral / Ministral
families. Everything the model, the RoPE tables and the decode loops need is resolved here once,
so the rest of the code never looks at raw JSON.
"""
from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import torch

TRI_MODE_TYPES = {"nemotron_labs_diffusion"}
AR_TYPES = {"llama", "mistral", "ministral", "ministral3"}
SUPPORTED_TYPES = TRI_MODE_TYPES | AR_TYPES


class ConfigError(ValueError):
    """A config.json that trikern cannot use; the message names the file and the key."""


@dataclass(frozen=True)
class RopeConfig:
    theta: float = 10000.0
    rope_type: str = "default"  # "default" | "yarn" | "llama3"
    factor: float = 1.0
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    low_freq_factor: float = 1.0
    high_freq_factor: float = 4.0
    llama_4_scaling_beta: float | None = None


@dataclass(frozen=True)
class ModelConfig:
    model_type: str
    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int
    head_dim: int
    rms_norm_eps: float
    max_position_embeddings: int
    tie_word_embeddings: bool
    rope: RopeConfig
    eos_token_ids: tuple[int, ...] = ()
    bos_token_id: int | None = None
    mask_token_id: int | None = None
    block_size: int = 32
    raw: dict = field(default_factory=dict, compare=False, repr=False)

    @property
    def tri_mode(self) -> bool:
        return self.model_type in TRI_MODE_TYPES

    @property
    def prefix(self) -> str:
        """Tensor-name prefix of the decoder stack in the checkpoint."""
        return "encoder" if self.tri_mode else "model"

    @property
    def head_name(self) -> str:
        return "diffusion_head.weight" if self.tri_mode else "lm_head.weight"

    @property
    def gqa_ratio(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    # -- construction -------------------------------------------------------------------
    @classmethod
    def from_dict(cls, d: dict, source: str = "config.json") -> "ModelConfig":
        def need(key):
            if key not in d or d[key] is None:
                raise ConfigError(f"{source}: missing required key '{key}'")
            return d[key]

        model_type = need("model_type")
        if model_type not in SUPPORTED_TYPES:
            raise ConfigError(
                f"{source}: unknown model_type '{model_type}' "
                f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})"
            )
        if model_type == "mistral3" or "text_config" in d:
            raise ConfigError(f"{source}: multimodal wrappers are not supported; pass the text config")
        hidden = int(need("hidden_size"))
        heads = int(need("num_attention_heads"))
        kv_heads = int(d.get("num_key_value_heads") or heads)
        if heads % kv_heads:
            raise ConfigError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        head_dim = int(d.get("head_dim") or hidden // heads)
        if head_dim % 2:
            raise ConfigError(f"{source}: head_dim={head_dim} must be even for rotary embeddings")
        eos = d.get("eos_token_id")
        eos_ids = tuple(eos) if isinstance(eos, (list, tuple)) else (() if eos is None else (int(eos),))
        tri = model_type in TRI_MODE_TYPES
        if tri:
            need("mask_token_id")
        max_pos = int(d.get("max_position_embeddings", 4096))
        window = d.get("sliding_window")
        if window and int(window) < max_pos:
            # Full attention equals sliding-window attention only inside the window: cap the context
            # there rather than silently diverging from the reference past it.
            warnings.warn(f"{source}: sliding_window={window} < max_position_embeddings={max_pos}; "
                          f"trikern attends fully, so the context is limited to {window} tokens")
            max_pos = int(window)
        return cls(
            model_type=model_type,
            vocab_size=int(need("vocab_size")),
            hidden_size=hidden,
            intermediate_size=int(need("intermediate_size")),
            num_hidden_layers=int(need("num_hidden_layers")),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-5)),
            max_position_embeddings=max_pos,
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            rope=_parse_rope(d, source),
            eos_token_ids=tuple(int(e) for e in eos_ids),
            bos_token_id=d.get("bos_token_id", 1 if tri else None),
            mask_token_id=d.get("mask_token_id"),
            block_size=int(d.get("block_size", 32)),
            raw=dict(d),
        )

    @classmethod
    def from_file(cls, path: str | Path) -> "ModelConfig":
        path = Path(path)
        if path.is_dir():
            path = path / "config.json"
        if not path.is_file():
            raise ConfigError(f"{path}: config.json not found")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))


def _parse_rope(d: dict, source: str) -> RopeConfig:
    # Newer HF configs nest everything under rope_parameters; older ones use rope_theta +
    # rope_scaling. Read both so Llama 3.x, Mistral and NLD configs all resolve here.
    params = dict(d.get("rope_parameters") or {})
    scaling = d.get("rope_scaling") or {}
    params = {**scaling, **params}
    theta = float(params.get("rope_theta", d.get("rope_theta", 10000.0)))
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in ("default", "yarn", "llama3"):
        raise ConfigError(f"{source}: unsupported rope_type '{rope_type}' (rope_parameters.rope_type)")
    kw = dict(theta=theta, rope_type=rope_type)
    if rope_type != "default":
        if "factor" not in params:
            raise ConfigError(f"{source}: missing required key 'rope_parameters.factor' for {rope_type}")
        kw["factor"] = float(params["factor"])
        kw["original_max_position_embeddings"] = int(
            params.get("original_max_position_embeddings") or d.get("max_position_embeddings", 4096)
        )
    for key in ("beta_fast", "beta_slow", "mscale", "mscale_all_dim", "low_freq_factor", "high_freq_factor"):
        if params.get(key) is not None:
            kw[key] = float(params[key])
    beta = params.get("llama_4_scaling_beta", d.get("llama_4_scaling_beta"))
    if beta is not None:
        kw["llama_4_scaling_beta"] = float(beta)
        kw.setdefault("original_max_position_embeddings", int(
            params.get("original_max_position_embeddings") or d.get("max_position_embeddings", 4096)))
    return RopeConfig(**kw)


# -- RoPE tables (SPEC §2) --------------------------------------------------------------------
def _yarn_mscale(scale: float, m: float) -> float:
    return 1.0 if scale <= 1 else 0.1 * m * math.log(scale) + 1.0


def inv_freq(rope: RopeConfig, head_dim: int) -> torch.Tensor:
    """Inverse frequencies (fp32, [head_dim/2]) computed once on the host."""
    d = head_dim
    base = rope.theta ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    if rope.rope_type == "default":
        return base.float()
    if rope.rope_type == "yarn":
        L = rope.original_max_position_embeddings

        def corr(r):
            return d * math.log(L / (2 * math.pi * r)) / (2 * math.log(rope.theta))

        low = max(math.floor(corr(rope.beta_fast)), 0)
        high = min(math.ceil(corr(rope.beta_slow)), d - 1)
        if low == high:
            high += 0.001  # avoid a zero-width ramp
        ramp = ((torch.arange(d // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
        return ((1 - ramp) * base + ramp * base / rope.factor).float()
    # llama3: wavelength-banded scaling
    L = rope.original_max_position_embeddings
    low_wl = L / rope.low_freq_factor
    high_wl = L / rope.high_freq_factor
    wl = 2 * math.pi / base
    smooth = (L / wl - rope.low_freq_factor) / (rope.high_freq_factor - rope.low_freq_factor)
    scaled = torch.where(wl > low_wl, base / rope.factor, base)
    mid = (wl <= low_wl) & (wl >= high_wl)
    scaled = torch.where(mid, (1 - smooth) * base / rope.factor + smooth * base, scaled)
    return scaled.float()


def attention_factor(rope: RopeConfig) -> float:
    """cos/sin multiplier; YaRN gives mscale(s, m)/mscale(s, m_all) (= 1 for NLD)."""
    if rope.rope_type != "yarn":
        return 1.0
    return _yarn_mscale(rope.factor, rope.mscale) / _yarn_mscale(rope.factor, rope.mscale_all_dim)
