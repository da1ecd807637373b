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

from .checks import bool_problem, int_problem, real_problem

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
        """Every field trikern reads is checked here (type, range, consistency), so a bad config.json
        fails at load with one ConfigError naming the file and the key, never later as a shape
        mismatch. Keys trikern does not read (hidden_act, pad_token_id, ...) are left alone."""
        if not isinstance(d, dict):
            raise ConfigError(f"{source}: expected a JSON object, got {type(d).__name__}")
        f = _Fields(d, source)
        model_type = f.value("model_type")
        if not isinstance(model_type, str) or model_type not in SUPPORTED_TYPES:
            raise ConfigError(
                f"{source}: unknown model_type '{model_type}' "
                f"(supported: {', '.join(sorted(SUPPORTED_TYPES))})"
            )
        if model_type == "mistral3" or "text_config" in d:
            raise ConfigError(f"{source}: multimodal wrappers are not supported; pass the text config")
        tri = model_type in TRI_MODE_TYPES
        vocab = f.int("vocab_size", lo=2)
        hidden = f.int("hidden_size")
        heads = f.int("num_attention_heads")
        kv_heads = f.int("num_key_value_heads", default=heads)  # absent / null: no GQA
        if heads % kv_heads:
            raise ConfigError(
                f"{source}: num_attention_heads={heads} is not a multiple of num_key_value_heads={kv_heads}"
            )
        head_dim = f.int("head_dim", default=None)
        if head_dim is None:
            if hidden % heads:
                raise ConfigError(f"{source}: hidden_size={hidden} is not a multiple of num_attention_heads="
                                  f"{heads}; give head_dim explicitly")
            head_dim = hidden // heads
        if head_dim % 2:
            raise ConfigError(f"{source}: head_dim={head_dim} must be even for rotary embeddings")
        max_pos = trained_max_pos = f.int("max_position_embeddings", default=4096, lo=2)  # a prompt + a new token
        window = f.int("sliding_window", default=None, lo=2)
        if window is not None and window < max_pos:
            # Full attention equals sliding-window attention only inside the window: cap the context
            # there rather than silently diverging from the reference past it.
            warnings.warn(f"{source}: sliding_window={window} < max_position_embeddings={max_pos}; "
                          f"trikern attends fully, so the context is limited to {window} tokens")
            max_pos = window
        eos = d.get("eos_token_id")
        eos_list = list(eos) if isinstance(eos, (list, tuple)) else ([] if eos is None else [eos])
        for i, e in enumerate(eos_list):
            key = f"eos_token_id[{i}]" if isinstance(eos, (list, tuple)) else "eos_token_id"
            f.token(key, e, vocab)
        return cls(
            model_type=model_type,
            vocab_size=vocab,
            hidden_size=hidden,
            intermediate_size=f.int("intermediate_size"),
            num_hidden_layers=f.int("num_hidden_layers"),
            num_attention_heads=heads,
            num_key_value_heads=kv_heads,
            head_dim=head_dim,
            rms_norm_eps=f.real("rms_norm_eps", default=1e-5, lo=0, lo_open=True),
            max_position_embeddings=max_pos,
            tie_word_embeddings=f.bool("tie_word_embeddings", default=False),
            rope=_parse_rope(d, source, trained_max_pos),
            eos_token_ids=tuple(int(e) for e in eos_list),
            bos_token_id=f.token("bos_token_id", d.get("bos_token_id", 1 if tri else None), vocab),
            mask_token_id=f.token("mask_token_id", f.value("mask_token_id") if tri else d.get("mask_token_id"), vocab),
            # A block must fit the context beside at least one prompt token.
            block_size=f.int("block_size", default=min(32, max_pos - 1), hi=max_pos - 1),
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
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ConfigError(f"{path}: not valid JSON ({e})") from None
        return cls.from_dict(d, str(path))


_REQUIRED = object()


class _Fields:
    """Typed, range-checked reads of a config dict; errors name the file and the key.

    `names` maps a key to how the user wrote it (rope keys may sit under rope_parameters or
    rope_scaling). A key that is absent or null takes the default; without one it is required.
    """

    def __init__(self, d: dict, source: str, names: dict | None = None):
        self.d, self.source, self.names = d, source, names or {}

    def name(self, key: str) -> str:
        return self.names.get(key, key)

    def value(self, key: str, default=_REQUIRED):
        v = self.d.get(key)
        if v is None:
            if default is _REQUIRED:
                raise ConfigError(f"{self.source}: missing required key '{self.name(key)}'")
            return default
        return v

    def _checked(self, key, v, problem):
        if problem is not None:
            raise ConfigError(f"{self.source}: {self.name(key)}={v!r}: {problem}")
        return v

    def int(self, key: str, default=_REQUIRED, lo: int = 1, hi: int | None = None):
        v = self.value(key, default)
        return v if v is default else self._checked(key, v, int_problem(v, lo=lo, hi=hi))

    def real(self, key: str, default=_REQUIRED, lo=None, lo_open=False):
        v = self.value(key, default)
        return v if v is default else float(self._checked(key, v, real_problem(v, lo=lo, lo_open=lo_open)))

    def bool(self, key: str, default=_REQUIRED):
        v = self.value(key, default)
        return v if v is default else self._checked(key, v, bool_problem(v))

    def token(self, key: str, v, vocab: int):
        """A token id (or None) inside the vocabulary."""
        if v is None:
            return None
        problem = int_problem(v, lo=0, hi=vocab, hi_open=True)
        if problem is not None:
            problem += f" (a token id below vocab_size={vocab})"
        return self._checked(key, v, problem)


def _parse_rope(d: dict, source: str, max_pos: int) -> RopeConfig:
    # Newer HF configs nest everything under rope_parameters; older ones use rope_theta +
    # rope_scaling. Read both so Llama 3.x, Mistral and NLD configs all resolve here.
    names = {}
    params = {}
    for outer in ("rope_scaling", "rope_parameters"):  # rope_parameters wins on a clash
        block = d.get(outer)
        if block is None:
            continue
        if not isinstance(block, dict):
            raise ConfigError(f"{source}: {outer}={block!r}: expected a JSON object")
        params.update(block)
        names.update({k: f"{outer}.{k}" for k in block})
    for key in ("rope_theta", "llama_4_scaling_beta"):
        if key not in params and d.get(key) is not None:
            params[key] = d[key]
    f = _Fields(params, source, names)
    rope_type = params.get("rope_type", params.get("type", "default")) or "default"
    if rope_type not in ("default", "yarn", "llama3"):
        raise ConfigError(f"{source}: unsupported rope_type '{rope_type}' (rope_parameters.rope_type)")
    # theta is the base of the frequency ladder theta^(-2i/d); YaRN also divides by log(theta).
    kw = dict(theta=f.real("rope_theta", default=10000.0, lo=1, lo_open=True), rope_type=rope_type)
    beta = f.real("llama_4_scaling_beta", default=None)
    if rope_type != "default" or beta is not None:
        kw["original_max_position_embeddings"] = f.int("original_max_position_embeddings", default=max_pos)
    if rope_type != "default":
        if "factor" not in params:
            raise ConfigError(f"{source}: missing required key 'rope_parameters.factor' for {rope_type}")
        kw["factor"] = f.real("factor", lo=0, lo_open=True)
    if beta is not None:
        kw["llama_4_scaling_beta"] = beta
    for key in ("beta_fast", "beta_slow", "low_freq_factor", "high_freq_factor"):  # logs / divisions
        if params.get(key) is not None:
            kw[key] = f.real(key, lo=0, lo_open=True)
    for key in ("mscale", "mscale_all_dim"):
        if params.get(key) is not None:
            kw[key] = f.real(key)
    rope = RopeConfig(**kw)
    if rope_type == "llama3" and rope.high_freq_factor <= rope.low_freq_factor:
        # the smoothing band divides by high - low
        raise ConfigError(f"{source}: {f.name('high_freq_factor')}={rope.high_freq_factor} must be greater than "
                          f"{f.name('low_freq_factor')}={rope.low_freq_factor} for llama3 rope scaling")
    return rope


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
