"""trikern against HF `transformers` as an independent implementation, fp32 on CPU.

Each case writes one tiny checkpoint, loads it with both, and compares logits over a prompt and a
20-token greedy continuation (trikern's AR loop vs a greedy loop over HF's own KV cache). The NLD
checkpoint is compared with HF's Ministral-3 text decoder (same architecture) after renaming its
tensors. RoPE tables and the llama-4 query scaling are compared on the real NLD configs.
"""
from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

transformers = pytest.importorskip("transformers")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402
from transformers.models.ministral3 import modeling_ministral3 as hf_m3  # noqa: E402

from synth import write_json, write_llama_checkpoint, write_nld_checkpoint, write_weights  # noqa: E402
from trikern.config import ModelConfig, attention_factor, inv_freq  # noqa: E402
from trikern.decode import GenerationConfig, decode, new_context  # noqa: E402
from trikern.kernels import CAUSAL  # noqa: E402
from trikern.kernels.rope import rope_ref  # noqa: E402
from trikern.loading import load_model  # noqa: E402
from trikern.configs import config_dict  # noqa: E402

ATOL = 1e-4
NEW_TOKENS = 20
PROMPT_LEN = 70  # crosses the scaled ropes' original context (64) of the synthetic configs


def hf_load(folder):
    m = transformers.AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="eager")
    return m.eval()


def prompt_ids(vocab, n=PROMPT_LEN, seed=0):
    return torch.randint(0, vocab, (n,), generator=torch.Generator().manual_seed(seed))


def trikern_logits(model, ids, positions=None):
    positions = torch.arange(ids.shape[0]) if positions is None else positions
    with torch.no_grad():
        return model(ids, positions, None, CAUSAL)


def hf_logits(hf, ids, positions=None):
    # An explicit all-ones mask: without it HF reads position jumps as packed separate sequences.
    kw = {} if positions is None else {"position_ids": positions[None],
                                       "attention_mask": torch.ones(1, ids.shape[0], dtype=torch.long)}
    with torch.no_grad():
        return hf(ids[None], use_cache=False, **kw).logits[0]


def trikern_greedy(model, ids, n=NEW_TOKENS):
    ctx = new_context(model, GenerationConfig(max_new_tokens=n), ids.shape[0])
    with torch.no_grad():
        return [t for step in decode(ctx, ids, "ar") for t in step]


def hf_greedy(hf, ids, n=NEW_TOKENS):
    out, tokens = [], ids[None]
    past = None
    with torch.no_grad():
        for _ in range(n):
            r = hf(tokens, past_key_values=past, use_cache=True)
            past = r.past_key_values
            tokens = r.logits[:, -1].argmax(-1, keepdim=True)
            out.append(int(tokens))
    return out


def check_parity(model, hf):
    ids = prompt_ids(model.cfg.vocab_size)
    ours, theirs = trikern_logits(model, ids), hf_logits(hf, ids)
    assert ours.shape == theirs.shape == (PROMPT_LEN, model.cfg.vocab_size)
    assert theirs.abs().max() > 1, "logits too flat for the comparison to mean anything"
    torch.testing.assert_close(ours, theirs, atol=ATOL, rtol=0)
    greedy = trikern_greedy(model, ids)
    assert len(greedy) == NEW_TOKENS
    assert greedy == hf_greedy(hf, ids)


@pytest.mark.parametrize("family,rope,tied", [
    ("llama", "default", False),
    ("llama", "llama3", True),
    ("mistral", "default", False),
    ("ministral", "default", False),
    ("ministral3", "yarn", False),
])
def test_ar_family_matches_hf(tmp_path, family, rope, tied):
    folder = write_llama_checkpoint(tmp_path, family=family, rope=rope, tied=tied, dtype=torch.float32)
    model = load_model(folder, device="cpu", dtype=torch.float32, lora=False)
    hf = hf_load(folder)
    assert type(hf).__name__ == json.loads((folder / "config.json").read_text())["architectures"][0]
    assert (model.lm_head is None) == tied
    check_parity(model, hf)


def nld_as_ministral3(nld_folder, out):
    """The NLD checkpoint under HF Ministral-3 names: same config values, `model.*` + `lm_head`."""
    d = json.loads((nld_folder / "config.json").read_text())
    d.update(model_type="ministral3", architectures=["Ministral3ForCausalLM"])
    write_json(out / "config.json", d)
    tensors = load_file(nld_folder / "model.safetensors")
    renamed = {("lm_head.weight" if k == "diffusion_head.weight" else "model." + k.removeprefix("encoder.")): v
               for k, v in tensors.items()}
    write_weights(out, renamed)
    return out


def test_nld_matches_hf_ministral3(tmp_path):
    nld = write_nld_checkpoint(tmp_path / "nld", dtype=torch.float32)
    model = load_model(nld, device="cpu", dtype=torch.float32, lora=False)
    hf = hf_load(nld_as_ministral3(nld, tmp_path / "hf"))
    assert model.cfg.tri_mode and model.cfg.rope.rope_type == "yarn"
    check_parity(model, hf)


def test_nld_llama4_scaling_matches_hf_beyond_original_context(tmp_path):
    """The real NLD rope (L = 16384) at positions in four llama-4 scaling bands."""
    nld = write_nld_checkpoint(tmp_path / "nld", dtype=torch.float32)
    model = load_model(nld, device="cpu", dtype=torch.float32, lora=False)
    hf = hf_load(nld_as_ministral3(nld, tmp_path / "hf"))
    L = model.cfg.rope.original_max_position_embeddings
    assert L == 16384
    positions = torch.cat([torch.arange(0, 6), torch.arange(L - 3, L + 3), torch.arange(3 * L - 2, 3 * L + 4)])
    ids = prompt_ids(model.cfg.vocab_size, positions.shape[0], seed=1)
    # Large positions amplify the last-ulp difference of the two inverse-frequency tables, so the
    # tables are made identical first: this test is about the query scaling.
    hf_inv = hf.model.rotary_emb.inv_freq
    torch.testing.assert_close(model.inv_freq, hf_inv, rtol=3e-7, atol=0)
    model.inv_freq = hf_inv.clone()
    torch.testing.assert_close(trikern_logits(model, ids, positions), hf_logits(hf, ids, positions),
                               atol=ATOL, rtol=0)


# -- RoPE tables on the real (full-size) configs ------------------------------------------------------
def hf_config(d: dict):
    """An HF config object of the Ministral-3 text decoder with the same values (no weights)."""
    d = {k: v for k, v in d.items() if k not in ("model_type", "architectures")}
    return transformers.Ministral3Config(**d)


@pytest.mark.parametrize("name", ["nld-3b", "nld-8b", "nld-14b"])
def test_yarn_inv_freq_matches_hf(name):
    d = config_dict(name)
    cfg = ModelConfig.from_dict(d)
    ref, ref_factor = ROPE_INIT_FUNCTIONS["yarn"](hf_config(d))
    ours = inv_freq(cfg.rope, cfg.head_dim)
    assert ours.shape == ref.shape == (cfg.head_dim // 2,)
    torch.testing.assert_close(ours, ref, rtol=3e-7, atol=0)
    # YaRN must differ from plain RoPE (or the comparison above proves nothing).
    plain = cfg.rope.theta ** (-torch.arange(0, cfg.head_dim, 2, dtype=torch.float64) / cfg.head_dim)
    assert (ours.double() / plain).min() < 0.1
    assert attention_factor(cfg.rope) == pytest.approx(ref_factor)


def test_llama3_inv_freq_matches_hf():
    """Llama 3.1 geometry: every wavelength band (kept, smoothed, scaled) is present."""
    d = dict(model_type="llama", hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
             num_attention_heads=32, num_key_value_heads=8, vocab_size=128256, rope_theta=500000.0,
             max_position_embeddings=131072,
             rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                               original_max_position_embeddings=8192))
    cfg = ModelConfig.from_dict(d)
    hf_cfg = transformers.LlamaConfig(**{k: v for k, v in d.items() if k != "model_type"})
    ref, _ = ROPE_INIT_FUNCTIONS["llama3"](hf_cfg)
    torch.testing.assert_close(inv_freq(cfg.rope, cfg.head_dim), ref, rtol=3e-7, atol=0)


@pytest.mark.parametrize("name", ["nld-3b", "nld-14b"])
def test_llama4_query_scaling_matches_hf(name):
    d = config_dict(name)
    cfg, hcfg = ModelConfig.from_dict(d), hf_config(d)
    r = cfg.rope
    L = r.original_max_position_embeddings
    positions = torch.tensor([0, 1, L - 1, L, L + 1, 2 * L - 1, 2 * L, 5 * L + 7, 16 * L - 1])
    g = torch.Generator().manual_seed(0)
    q = torch.randn(positions.shape[0], cfg.num_attention_heads, cfg.head_dim, generator=g)
    k = torch.randn(positions.shape[0], cfg.num_key_value_heads, cfg.head_dim, generator=g)
    rotary = hf_m3.Ministral3RotaryEmbedding(hcfg)
    cos, sin = rotary(q, positions[None])
    hq, hk = hf_m3.apply_rotary_pos_emb(q.transpose(0, 1)[None], k.transpose(0, 1)[None], cos, sin)
    hq = hq * hf_m3.get_llama_4_attn_scale(positions[None], hcfg.rope_parameters["llama_4_scaling_beta"],
                                           hcfg.rope_parameters["original_max_position_embeddings"])
    # Same table on both sides (see the NLD logits test); the scaling is what is compared here.
    oq, ok = rope_ref(q, k, positions, rotary.inv_freq, attention_factor(r), r.llama_4_scaling_beta, L)
    torch.testing.assert_close(oq, hq[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ok, hk[0].transpose(0, 1), atol=1e-5, rtol=1e-5)
    # The scaling is an exact no-op below L and grows past it.
    unscaled, _ = rope_ref(q, k, positions, rotary.inv_freq, attention_factor(r), None, L)
    below = positions < L
    assert torch.equal(oq[below], unscaled[below])
    ratio = oq[~below].norm(dim=(1, 2)) / unscaled[~below].norm(dim=(1, 2))
    expect = 1 + r.llama_4_scaling_beta * torch.log1p(torch.floor(positions[~below] / L))
    torch.testing.assert_close(ratio, expect, rtol=1e-5, atol=0)
