"""Every bad input is one clear error naming the parameter, field or file: request options (NaN /
inf, non-integers, out-of-range seeds and block sizes), prompts, stop strings, chat messages,
config.json fields, checkpoint paths, and the `trikern` command (exit code 2, one line, no traceback)."""
import json
import subprocess
import sys

import pytest
import torch
from synth import write_chat_checkpoint, write_llama_checkpoint
from util import CHILD_ENV as ENV
from util import nld_config_dict, random_model, tiny_config

import trikern
from trikern.checks import MAX_BLOCK_SIZE, QUADRATIC_BUDGET_BYTES, check_block_size, quadratic_step_bytes
from trikern.config import ConfigError, ModelConfig
from trikern.decode import STEP_MODES, GenerationConfig, new_context
from trikern.loading import CheckpointError

MODES = STEP_MODES
NAN, INF = float("nan"), float("inf")


@pytest.fixture(scope="module")
def ckpt(chat_ckpt):
    return chat_ckpt


@pytest.fixture(scope="module")
def model(ckpt):
    return trikern.load(ckpt, device="cpu", dtype=torch.float32)


# -- request options ---------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", ["temperature", "top_p", "threshold"])
@pytest.mark.parametrize("value", [NAN, INF, -INF])
def test_non_finite_floats_are_refused_in_every_mode(model, mode, name, value):
    with pytest.raises(ValueError, match=rf"^{name}={value}: expected .*finite number"):
        model.generate("def f(", mode=mode, max_new_tokens=4, **{name: value})


@pytest.mark.parametrize("name, value, why", [
    ("temperature", -0.5, ">= 1e-06"),
    ("temperature", 1e-30, ">= 1e-06"),  # logits / T would overflow fp32
    ("temperature", "0.7", "got str"),
    ("temperature", True, "got bool"),
    ("top_p", 0.0, r"in \(0, 1\]"),
    ("top_p", 1.5, r"in \(0, 1\]"),
    ("threshold", -0.1, r"in \[0, 1\]"),
    ("max_new_tokens", 2.5, "an integer >= 0, got float"),
    ("max_new_tokens", -1, "an integer >= 0"),
    ("max_new_tokens", "8", "got str"),
    ("block_size", 2.5, "an integer >= 1, got float"),
    ("block_size", 0, "an integer >= 1"),
    ("block_size", True, "got bool"),
    ("top_k", 2.5, "got float"),
    ("top_k", -1, ">= 0"),
    ("seed", "abc", "got str"),
    ("seed", 2**70, r"in \[0, 2\*\*64\)"),
    ("seed", -1, r"in \[0, 2\*\*64\)"),
    ("seed", 1.0, "got float"),
    ("thinking_budget", 1.5, "got float"),
    ("draft_lora", "no", "true or false"),
    ("cuda_graphs", 1, "true or false"),
])
def test_bad_option_names_the_parameter(model, name, value, why):
    with pytest.raises(ValueError, match=rf"^{name}=.*{why}"):
        model.generate("def f(", mode="spec-linear", **{"max_new_tokens": 4, name: value})


def test_good_edge_values_still_decode(model):
    r = model.generate("def f(", max_new_tokens=3, temperature=0.5, seed=2**64 - 1, top_k=10**6, top_p=1.0)
    assert len(r.token_ids) == 3
    assert len(model.generate("x", mode="spec-linear", max_new_tokens=2, block_size=MAX_BLOCK_SIZE).token_ids) == 2


def test_unknown_option_is_named(model):
    with pytest.raises(TypeError, match="'temprature'.*temperature"):
        model.generate("x", temprature=0.5)


def test_stream_checks_at_the_call_not_the_first_piece(model):
    with pytest.raises(ValueError, match="^temperature=nan"):
        model.stream("x", temperature=NAN)  # not iterated
    with pytest.raises(ValueError, match="^block_size=300"):
        model.chat_stream([{"role": "user", "content": "hi"}], mode="diffusion", block_size=300)


def test_generation_config_validates_directly():
    with pytest.raises(ValueError, match="^top_p=nan"):
        GenerationConfig(top_p=NAN).validate()
    with pytest.raises(ValueError, match=r"^stop_token_ids\[1\]=-2"):
        GenerationConfig(stop_token_ids=(2, -2)).validate()
    with pytest.raises(ValueError, match="^end_think_id='x'"):
        GenerationConfig(end_think_id="x").validate()


# -- block size ----------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", MODES)
def test_block_size_over_the_cap_is_refused_before_allocating(model, mode):
    with pytest.raises(ValueError, match=rf"^block_size=300: expected at most {MAX_BLOCK_SIZE}: .*capped") as e:
        model.generate("x", mode=mode, max_new_tokens=8, block_size=300)
    assert "context (512 tokens)" in str(e.value)


def test_block_size_must_be_shorter_than_the_context():
    m = random_model(tiny_config(max_position_embeddings=16))
    with pytest.raises(ValueError, match=r"^block_size=16: expected at most 15"):
        new_context(m, GenerationConfig(max_new_tokens=2, block_size=16), 3, "spec-linear")
    new_context(m, GenerationConfig(max_new_tokens=2, block_size=15), 3, "spec-linear")


def test_checkpoint_block_size_above_the_cap_is_allowed():
    cfg = tiny_config(block_size=100)
    check_block_size(cfg, 100, "diffusion", 4)
    with pytest.raises(ValueError, match="^block_size=101: expected at most 100"):
        check_block_size(cfg, 101, "diffusion", 4)


def test_quadratic_estimate_matches_the_allocated_scratch():
    m = random_model()
    cfg, B = m.cfg, 6
    ctx = new_context(m, GenerationConfig(max_new_tokens=4, block_size=B), 3, "spec-quadratic")
    scratch = ctx.cache.slots - ctx.cache.capacity
    assert scratch == B * (B + 1)
    allocated = (ctx.cache.k.numel() + ctx.cache.v.numel()) * ctx.cache.k.element_size()
    per_slot = allocated // ctx.cache.slots
    assert quadratic_step_bytes(cfg, B, 4)["kv_scratch"] == per_slot * scratch


def test_quadratic_over_the_memory_budget_is_refused_with_the_numbers():
    big = ModelConfig.from_dict(nld_config_dict(
        hidden_size=16384, intermediate_size=53248, num_hidden_layers=126, num_attention_heads=128,
        num_key_value_heads=16, head_dim=128, vocab_size=128256, block_size=32, max_position_embeddings=131072))
    parts = quadratic_step_bytes(big, 64, 2)
    assert sum(parts.values()) > QUADRATIC_BUDGET_BYTES
    with pytest.raises(ValueError, match=r"^block_size=64: a spec-quadratic step runs B\(B\+1\) = 4160 rows") as e:
        check_block_size(big, 64, "spec-quadratic", 2)
    assert "kv_scratch" in str(e.value) and "GiB" in str(e.value) and "spec-linear" in str(e.value)
    check_block_size(big, 64, "spec-linear", 2)  # B rows only: fine
    check_block_size(big, 16, "spec-quadratic", 2)  # 272 rows: fine


# -- prompts, stop strings, messages -------------------------------------------------------------
@pytest.mark.parametrize("prompt, why", [
    (None, "prompt is NoneType"),
    (5, "prompt is int"),
    (2.5, "prompt is float"),
    (b"def f():", "prompt is bytes"),
    (bytearray(b"ab"), "prompt is bytearray"),
    ({1, 2}, "prompt is set"),
    ([1.0, 2.0], r"prompt token ids\[0\] = 1.0"),
    ([1, True], r"prompt token ids\[1\] = True"),
    (torch.tensor([[1, 2]]), "prompt is a 2-D Tensor"),
    (torch.tensor([1.5]), r"prompt token ids\[0\] = 1.5"),
])
def test_bad_prompt_names_prompt(model, prompt, why):
    with pytest.raises(ValueError, match=f"^{why}"):
        model.generate(prompt, max_new_tokens=2)


def test_token_id_sequences_of_every_kind_agree(model):
    ref = model.generate([10, 11, 12], max_new_tokens=3).token_ids
    for p in [(10, 11, 12), range(10, 13), torch.tensor([10, 11, 12])]:
        assert model.generate(p, max_new_tokens=3).token_ids == ref


@pytest.mark.parametrize("stop, why", [
    (5, "stop must be a string or a list of strings, got int"),
    (["ok", 3], r"stop\[1\] must be a string"),
    ("", r"stop\[0\] is empty"),
])
def test_bad_stop_names_stop(model, stop, why):
    with pytest.raises(ValueError, match=why):
        model.generate("x", max_new_tokens=2, stop=stop)


def test_stop_strings_without_a_tokenizer(tmp_path):
    m = trikern.load(write_llama_checkpoint(tmp_path / "llama"), device="cpu", dtype=torch.float32)
    assert m.tokenizer is None
    with pytest.raises(ValueError, match="^stop='x': stop strings need text"):
        m.generate([1, 2], max_new_tokens=2, stop="x")


@pytest.mark.parametrize("messages, why", [
    (None, "messages must be a list"),
    ("hi", "messages must be a list"),
    ([], "messages is empty"),
    (["hi"], r"messages\[0\] must be a dict"),
    ([{"role": "user"}], r"messages\[0\] .*has no 'content'"),
    ([{"role": "user", "content": "a"}, {"role": 1, "content": "b"}], r"messages\[1\]\['role'\]"),
    ([{"role": "user", "content": 5}], r"messages\[0\]\['content'\]"),
])
def test_bad_messages_name_the_message(model, messages, why):
    with pytest.raises(ValueError, match=why):
        model.chat(messages, max_new_tokens=2)


def test_bad_template_kwargs(model):
    with pytest.raises(ValueError, match="^template_kwargs="):
        model.chat([{"role": "user", "content": "a"}], template_kwargs=["enable_thinking"])


# -- config.json ---------------------------------------------------------------------------------
@pytest.mark.parametrize("overrides, why", [
    (dict(hidden_size=-64), "hidden_size=-64: expected an integer >= 1"),
    (dict(hidden_size=64.0), "hidden_size=64.0: expected an integer >= 1, got float"),
    (dict(hidden_size="64"), "hidden_size='64'"),
    (dict(num_key_value_heads=0), "num_key_value_heads=0: expected an integer >= 1"),
    (dict(num_attention_heads=0), "num_attention_heads=0"),
    (dict(num_hidden_layers=True), "num_hidden_layers=True: .*got bool"),
    (dict(intermediate_size=0), "intermediate_size=0"),
    (dict(vocab_size=1), "vocab_size=1: expected an integer >= 2"),
    (dict(head_dim=0), "head_dim=0"),
    (dict(head_dim=None, hidden_size=66), "hidden_size=66 is not a multiple of num_attention_heads=4"),
    (dict(mask_token_id=160),
     r"mask_token_id=160: expected an integer in \[0, 160\) \(a token id below vocab_size=160\)"),
    (dict(mask_token_id=-1), "mask_token_id=-1"),
    (dict(bos_token_id=500), "bos_token_id=500"),
    (dict(eos_token_id=[11, 999]), r"eos_token_id\[1\]=999"),
    (dict(eos_token_id="11"), "eos_token_id='11'"),
    (dict(block_size=0), "block_size=0: expected an integer in \\[1, 511\\]"),
    (dict(block_size=512), "block_size=512"),
    (dict(max_position_embeddings=1), "max_position_embeddings=1"),
    (dict(sliding_window=0), "sliding_window=0"),
    (dict(rms_norm_eps=0), "rms_norm_eps=0: expected a finite number > 0"),
    (dict(rms_norm_eps=NAN), "rms_norm_eps=nan"),
    (dict(tie_word_embeddings="false"), "tie_word_embeddings='false': expected true or false"),
    (dict(rope_parameters="yarn"), "rope_parameters='yarn': expected a JSON object"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 0, "rope_theta": 1e6}), "rope_parameters.factor=0"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": INF}), "rope_parameters.rope_theta=inf"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "rope_theta": 1.0}), "rope_parameters.rope_theta=1.0"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "beta_fast": -1}), "rope_parameters.beta_fast=-1"),
    (dict(rope_parameters={"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}),
     "rope_parameters.original_max_position_embeddings=0"),
    (dict(rope_parameters={"rope_type": "default", "llama_4_scaling_beta": "0.1"}),
     "rope_parameters.llama_4_scaling_beta='0.1'"),
    (dict(rope_parameters=None, rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 4.0,
                                              "high_freq_factor": 4.0}),
     "rope_scaling.high_freq_factor=4.0 must be greater than rope_scaling.low_freq_factor=4.0"),
])
def test_bad_config_field_names_file_and_field(overrides, why):
    with pytest.raises(ConfigError, match=f"^x/config.json: {why}"):
        ModelConfig.from_dict(nld_config_dict(**overrides), "x/config.json")


def test_bad_config_file_is_named_at_load(tmp_path):
    folder = write_chat_checkpoint(tmp_path / "ck")
    d = json.loads((folder / "config.json").read_text())
    d["num_key_value_heads"] = 0
    (folder / "config.json").write_text(json.dumps(d))
    with pytest.raises(ConfigError, match=f"^{folder / 'config.json'}: num_key_value_heads=0"):
        trikern.load(folder, device="cpu", dtype=torch.float32)
    (folder / "config.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="expected a JSON object, got list"):
        ModelConfig.from_file(folder)


# -- checkpoint paths ----------------------------------------------------------------------------
def test_config_json_path_means_its_folder(model, ckpt):
    m = trikern.load(ckpt / "config.json", device="cpu", dtype=torch.float32)
    assert m.path == ckpt and m.tokenizer is not None
    assert m.generate("def f(", max_new_tokens=4).text == model.generate("def f(", max_new_tokens=4).text


def test_other_files_and_bad_paths_are_refused(ckpt):
    with pytest.raises(CheckpointError, match="model.safetensors: is a file; pass the checkpoint folder"):
        trikern.load(ckpt / "model.safetensors", device="cpu")
    with pytest.raises(ValueError, match="^path=5: expected a checkpoint folder"):
        trikern.load(5)
    with pytest.raises(ValueError, match="^device='gpu': expected 'cpu', 'cuda' or 'cuda:N'$"):
        trikern.load(ckpt, device="gpu")


# -- the command ---------------------------------------------------------------------------------


def run_cli(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "trikern", *args], input=stdin, capture_output=True, text=True,
                          env=ENV, timeout=300)


def test_version():
    r = run_cli("--version")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"trikern {trikern.__version__} (torch ") and "triton" in r.stdout
    from trikern.cpu_features import detect
    cpu = r.stdout.splitlines()[1]  # what this CPU can do and the dtype that follows, with the reason
    assert cpu == detect().summary() and f"default CPU dtype {str(detect().default_dtype)[6:]}: " in cpu


@pytest.mark.parametrize("command, args, named", [
    ("generate", ["--temperature", "nan"], "temperature=nan"),
    ("generate", ["--mode", "spec-quadratic", "--block-size", "300"], "block_size=300"),
    ("generate", ["--seed", "-1"], "seed=-1"),
    ("chat", ["--threshold", "inf", "--mode", "diffusion"], "threshold=inf"),
])
def test_cli_bad_options_are_one_line_and_exit_2(ckpt, command, args, named):
    extra = [] if command == "chat" else ["x"]
    r = run_cli(command, "--model", str(ckpt), "--dtype", "float32", "--max-new-tokens", "4", *args, *extra,
                stdin="hello\n" if command == "chat" else None)
    assert r.returncode == 2, r.stderr
    assert "Traceback" not in r.stderr and r.stdout == ""
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"trikern {command}: error: {named}"), r.stderr
