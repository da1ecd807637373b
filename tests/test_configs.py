"""trikern.configs: the shipped NLD config.json files, their key facts, lookup errors, loading from
a path or a checkpoint folder, and that a non-editable install carries the JSON files."""
import json
import os
import subprocess
import sys

import pytest
from install_util import install, package_copy

from trikern import configs
from trikern.config import ConfigError, ModelConfig


# Hand-checked against the published model geometry (hidden, layers, intermediate, rope_theta).
GEOMETRY = {
    "nld-3b": (3072, 26, 9216, 1e6),
    "nld-8b": (4096, 34, 14336, 1e6),
    "nld-14b": (5120, 40, 16384, 1e9),
}


def test_names_smallest_first():
    assert configs.names() == ["nld-3b", "nld-8b", "nld-14b"]


@pytest.mark.parametrize("name", list(GEOMETRY))
def test_shipped_config_facts(name):
    hidden, layers, inter, theta = GEOMETRY[name]
    cfg = configs.load_config(name)
    assert isinstance(cfg, ModelConfig) and cfg.model_type == "nemotron_labs_diffusion" and cfg.tri_mode
    assert (cfg.hidden_size, cfg.num_hidden_layers, cfg.intermediate_size) == (hidden, layers, inter)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads, cfg.head_dim) == (32, 8, 128)
    assert cfg.vocab_size == 131072 and cfg.mask_token_id == 100 and cfg.eos_token_ids == (11,)
    assert cfg.block_size == 32 and not cfg.tie_word_embeddings and cfg.rms_norm_eps == 1e-5
    r = cfg.rope
    assert (r.rope_type, r.factor, r.original_max_position_embeddings, r.theta) == ("yarn", 16.0, 16384, theta)
    assert (r.beta_fast, r.beta_slow, r.llama_4_scaling_beta) == (32.0, 1.0, 0.1)
    # 3B and 14B are the models where head_dim is not hidden / heads: the config must say 128.
    if name != "nld-8b":
        assert hidden // cfg.num_attention_heads != cfg.head_dim


def test_config_dict_is_raw_json_and_fresh():
    d = configs.config_dict("nld-8b")
    assert d == json.loads(configs.path("nld-8b").read_text())
    assert d["architectures"] == ["NemotronLabsDiffusionModel"] and d["rope_parameters"]["rope_type"] == "yarn"
    d["hidden_size"] = 1
    assert configs.config_dict("nld-8b")["hidden_size"] == 4096  # a caller's edit never leaks


@pytest.mark.parametrize("call", [configs.config_dict, configs.path, configs.load_config])
def test_unknown_name_lists_shipped(call):
    with pytest.raises(ValueError) as err:
        call("nld-7b")
    msg = str(err.value)
    assert "'nld-7b'" in msg and "nld-3b, nld-8b, nld-14b" in msg
    assert not isinstance(err.value, ConfigError)  # a lookup error, not a bad file


def test_load_from_file_and_checkpoint_folder(tmp_path):
    d = configs.config_dict("nld-3b")
    d["num_hidden_layers"] = 3
    (tmp_path / "config.json").write_text(json.dumps(d))
    named = tmp_path / "mine.json"
    named.write_text(json.dumps(d))
    for arg in (tmp_path, str(tmp_path), tmp_path / "config.json", str(named)):
        assert configs.load_config(arg).num_hidden_layers == 3, arg


def test_relative_paths_and_name_precedence(tmp_path, monkeypatch):
    """A bare str that exists on disk is a path; a shipped name wins over a same-named folder."""
    d = configs.config_dict("nld-3b")
    d["num_hidden_layers"] = 5
    for folder in ("ckpt", "nld-8b"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "config.json").write_text(json.dumps(d))
    monkeypatch.chdir(tmp_path)
    assert configs.load_config("ckpt").num_hidden_layers == 5
    assert configs.load_config("nld-8b").num_hidden_layers == 34
    assert configs.load_config("./nld-8b").num_hidden_layers == 5


def test_path_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match="missing.json"):
        configs.load_config(str(tmp_path / "missing.json"))
    with pytest.raises(ConfigError, match="config.json not found"):
        configs.load_config(tmp_path)
    with pytest.raises(TypeError, match="name_or_path"):
        configs.load_config(3)


def test_shipped_after_plain_install(tmp_path):
    """A non-editable install carries configs/*.json (pyproject package-data) and loads each one."""
    # The 13 MB embedded model is irrelevant here; leaving it out keeps the install quick.
    site = install(package_copy(tmp_path, "assets"), tmp_path)
    installed = site / "trikern" / "configs"
    assert sorted(p.name for p in installed.glob("*.json")) == sorted(f"{n}.json" for n in configs.names())
    code = ("from trikern import configs\n"
            "assert 'site' in configs.__file__, configs.__file__\n"
            "print(configs.names(), [configs.load_config(n).hidden_size for n in configs.names()])")
    env = dict(os.environ, PYTHONPATH=str(site))
    out = subprocess.run([sys.executable, "-c", code], env=env, cwd=tmp_path, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "['nld-3b', 'nld-8b', 'nld-14b'] [3072, 4096, 5120]"
