"""The `trikern` console script, run as a real subprocess on an on-disk checkpoint."""
import json
import subprocess
import sys

import pytest
from util import CHILD_ENV as ENV


def trikern(*args, stdin=None):
    return subprocess.run([sys.executable, "-m", "trikern", *args], input=stdin, capture_output=True, text=True,
                          env=ENV, timeout=300)


@pytest.fixture(scope="module")
def ckpt(chat_ckpt):
    return str(chat_ckpt)


def test_help_lists_every_command_and_option():
    top = trikern("--help")
    assert top.returncode == 0
    for cmd in ("generate", "chat", "tune", "check-kernels"):
        assert cmd in top.stdout
    gen = trikern("generate", "--help").stdout
    for opt in ("--model", "--mode", "--max-new-tokens", "--temperature", "--top-p", "--seed", "--json", "--stop",
                "spec-quadratic"):
        assert opt in gen
    assert "/reset" in trikern("chat", "--help").stdout


def test_generate_json(ckpt):
    r = trikern("generate", "--model", ckpt, "--max-new-tokens", "6", "--dtype", "float32", "--json", "def f(")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert set(out) >= {"text", "token_ids", "stats", "finish_reason"}
    assert out["stats"]["generated_tokens"] == len(out["token_ids"]) <= 6


def test_generate_streams_text_and_stats(ckpt):
    j = json.loads(trikern("generate", "--model", ckpt, "--max-new-tokens", "6", "--dtype", "float32", "--json",
                           "hi").stdout)
    r = trikern("generate", "--model", ckpt, "--max-new-tokens", "6", "--dtype", "float32", "hi")
    assert r.returncode == 0 and r.stdout == j["text"] + "\n"
    assert "tok/fwd" in r.stderr


def test_bad_input_is_one_clear_error(ckpt, tmp_path):
    r = trikern("generate", "--model", str(tmp_path / "missing"), "x")
    assert r.returncode == 2 and "missing" in r.stderr and "Traceback" not in r.stderr
    r = trikern("generate", "--model", ckpt, "--top-p", "0", "x")
    assert r.returncode == 2 and "top_p" in r.stderr and "Traceback" not in r.stderr


def test_chat_reads_turns_from_stdin(ckpt):
    r = trikern("chat", "--model", ckpt, "--max-new-tokens", "4", "--dtype", "float32",
                stdin="hello\n/reset\nagain\n/exit\n")
    assert r.returncode == 0, r.stderr
    assert r.stderr.count("tok/fwd") == 2  # one stats line per reply


def test_check_kernels_passes_its_options_through():
    r = trikern("check-kernels", "--ops", "swiglu", "--arch", "sm_80")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "swiglu" in r.stdout and "sm_80" in r.stdout and "rope" not in r.stdout


def test_tune_options_belong_to_the_kernels_or_to_decode(capsys):
    """`trikern tune` holds both tuners' options; one of the other's is an error naming it."""
    from trikern.cli import main

    assert main(["tune", "--model", "x"]) == 2
    assert capsys.readouterr().err.endswith("trikern tune: error: --model applies only with --decode\n")
    assert main(["tune", "--decode", "--keep"]) == 2
    assert capsys.readouterr().err.endswith("trikern tune: error: --keep does not apply with --decode\n")
    assert main(["tune", "--decode", "--steps", "0"]) == 2
    assert capsys.readouterr().err == "trikern tune --decode: error: --steps 0: must be >= 1\n"
    assert main(["tune", "--threads", "1"]) == 2
    assert capsys.readouterr().err.endswith("trikern tune: error: --threads applies only with --decode\n")
    assert main(["tune", "--decode", "--threads", "0"]) == 2
    assert capsys.readouterr().err == "trikern tune --decode: error: --threads 0: must be >= 1\n"
    assert main(["tune", "--decode", "--cache-lengths", "8,x"]) == 2
    assert "--cache-lengths '8,x': expected positive integers" in capsys.readouterr().err
    assert main(["tune", "--decode", "--batch-sizes", "2,0"]) == 2
    assert "--batch-sizes '2,0': expected positive integers" in capsys.readouterr().err
    assert main(["tune", "--batch-sizes", "2"]) == 2
    assert capsys.readouterr().err.endswith("trikern tune: error: --batch-sizes applies only with --decode\n")
