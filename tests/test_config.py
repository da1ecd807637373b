"""config.json parsing: NLD and Llama-family keys, clear errors naming the key."""
import json

import pytest
from util import nld_config_dict

from trikern.config import ConfigError, ModelConfig, inv_freq
from trikern.configs import path as shipped_config


@pytest.mark.parametrize("name", ["nld-3b", "nld-8b", "nld-14b"])
def test_real_configs_parse(name):
    path = shipped_config(name)
    cfg = ModelConfig.from_file(path)
    raw = json.loads(path.read_text())
    assert cfg.tri_mode and cfg.prefix == "encoder" and cfg.head_name == "diffusion_head.weight"
    assert cfg.head_dim == 128 and cfg.gqa_ratio == 4 and cfg.mask_token_id == 100
    assert cfg.eos_token_ids == (11,) and cfg.block_size == 32 and not cfg.tie_word_embeddings
    assert cfg.rope.rope_type == "yarn" and cfg.rope.factor == 16 and cfg.rope.llama_4_scaling_beta == 0.1
    assert cfg.rope.theta == raw["rope_parameters"]["rope_theta"]
    f = inv_freq(cfg.rope, cfg.head_dim)
    assert f.shape == (64,) and f[0] == 1.0 and (f[1:] < f[:-1]).all()


def test_eos_list_and_llama_names():
    d = dict(model_type="llama", vocab_size=10, hidden_size=8, intermediate_size=16, num_hidden_layers=1,
             num_attention_heads=2, eos_token_id=[3, 4], tie_word_embeddings=True,
             rope_scaling={"rope_type": "llama3", "factor": 8.0, "original_max_position_embeddings": 64})
    cfg = ModelConfig.from_dict(d)
    assert cfg.eos_token_ids == (3, 4) and cfg.prefix == "model" and cfg.head_dim == 4
    assert cfg.num_key_value_heads == 2 and cfg.rope.rope_type == "llama3"


@pytest.mark.parametrize("drop", ["hidden_size", "vocab_size", "mask_token_id", "model_type", "num_hidden_layers"])
def test_missing_key_is_named(drop):
    d = nld_config_dict()
    del d[drop]
    with pytest.raises(ConfigError, match=f"'{drop}'"):
        ModelConfig.from_dict(d, "x/config.json")


def test_unknown_model_type_and_bad_geometry(tmp_path):
    with pytest.raises(ConfigError, match="unknown model_type 'gpt2'"):
        ModelConfig.from_dict(nld_config_dict(model_type="gpt2"))
    with pytest.raises(ConfigError, match="num_key_value_heads=3"):
        ModelConfig.from_dict(nld_config_dict(num_key_value_heads=3))
    with pytest.raises(ConfigError, match="rope_type 'dynamic'"):
        ModelConfig.from_dict(nld_config_dict(rope_parameters={"rope_type": "dynamic", "factor": 2.0}))
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        ModelConfig.from_file(tmp_path)
    with pytest.raises(ConfigError, match="not found"):
        ModelConfig.from_file(tmp_path / "sub")


def test_sliding_window_caps_context():
    with pytest.warns(UserWarning, match="sliding_window=64"):
        cfg = ModelConfig.from_dict(nld_config_dict(sliding_window=64))
    assert cfg.max_position_embeddings == 64
