"""`tree_nodes` through every front end: Model.generate / stream / check_options, the server's request
body (and usage.trikern), and the command line; one clear error naming `tree_nodes` for a bad value."""
import subprocess
import sys

import httpx
import pytest
import torch
from serve_util import ENV, Server

import trikern

PROMPT = "def fib(n):\n    if n < 2:\n        return n\n"


@pytest.fixture(scope="module")
def model():
    return trikern.load(dtype=torch.float32)


@pytest.mark.parametrize("mode", ["spec-linear", "spec-quadratic", "auto"])
def test_generate_with_a_tree_equals_ar(model, mode):
    ar = model.generate(PROMPT, max_new_tokens=32, reuse_prefix=False)
    r = model.generate(PROMPT, mode=mode, max_new_tokens=32, block_size=8, tree_nodes=12, reuse_prefix=False)
    assert r.token_ids == ar.token_ids and r.stats["tree_nodes"] == 12
    if mode != "auto":
        assert set(r.stats["strategies"]) == {f"{mode.replace('spec', 'tree')}/8"}
    text = "".join(model.stream(PROMPT, mode=mode, max_new_tokens=32, block_size=8, tree_nodes=12,
                                reuse_prefix=False))
    assert text == ar.text
    chain = model.generate(PROMPT, mode=mode, max_new_tokens=8, block_size=8, reuse_prefix=False)
    assert chain.stats["tree_nodes"] is None


@pytest.mark.parametrize("kw,match", [
    (dict(mode="spec-linear", tree_nodes=0), r"tree_nodes=0: expected an integer in \[1, 256\]"),
    (dict(mode="spec-linear", tree_nodes=257), r"tree_nodes=257: expected an integer in \[1, 256\]"),
    (dict(mode="spec-quadratic", tree_nodes=2.5), r"tree_nodes=2.5: expected an integer"),
    (dict(mode="ar", tree_nodes=8), r"tree_nodes=8: draft trees are for mode 'spec-linear', 'spec-quadratic' "
                                    r"or 'auto', not mode='ar'"),
    (dict(mode="diffusion", tree_nodes=8), r"not mode='diffusion'"),
])
def test_bad_tree_nodes_is_one_clear_error(model, kw, match):
    with pytest.raises(ValueError, match=match):
        model.check_options(**kw)
    with pytest.raises(ValueError, match=match):
        model.generate("x", max_new_tokens=2, **kw)


def test_server_request_body(tmp_path):
    s = Server(tmp_path / "server.log")
    try:
        body = {"prompt": PROMPT, "max_tokens": 24, "mode": "spec-quadratic", "block_size": 8, "tree_nodes": 8}
        r = httpx.post(s.url + "/v1/completions", json=body, timeout=120)
        assert r.status_code == 200, r.text
        usage = r.json()["usage"]["trikern"]
        assert usage["tree_nodes"] == 8 and set(usage["strategies"]) == {"tree-quadratic/8"}
        ar = httpx.post(s.url + "/v1/completions", json={"prompt": PROMPT, "max_tokens": 24}, timeout=120)
        assert r.json()["choices"][0]["text"] == ar.json()["choices"][0]["text"]
        for bad in ({"tree_nodes": 0, "mode": "spec-linear"}, {"tree_nodes": 8}, {"tree_nodes": "8", "mode": "auto"}):
            e = httpx.post(s.url + "/v1/completions", json={"prompt": "x", "max_tokens": 2, **bad}, timeout=60)
            assert e.status_code == 400 and e.json()["error"]["param"] == "tree_nodes", e.text
    finally:
        s.stop()
    assert "Traceback" not in s.log()


def test_command_line():
    def cli(*args):
        return subprocess.run([sys.executable, "-m", "trikern", "generate", *args], capture_output=True, text=True,
                              env=ENV, timeout=300)

    ok = cli("def f(x):", "--mode", "spec-linear", "--tree-nodes", "10", "--max-new-tokens", "12", "--dtype",
             "float32")
    assert ok.returncode == 0, ok.stderr
    assert "[spec-linear tree_nodes=10] 12 tokens" in ok.stderr
    bad = cli("x", "--tree-nodes", "0", "--mode", "spec-linear", "--max-new-tokens", "2")
    assert bad.returncode != 0 and "tree_nodes=0: expected an integer in [1, 256]" in bad.stderr
