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


def test_quadratic_tree_over_the_memory_budget_is_refused_with_the_numbers(monkeypatch):
    """A quadratic tree runs N(B+1) rows: the spec-quadratic memory check applies to its N, not B."""
    from util import random_model

    from trikern import checks
    from trikern.decode import GenerationConfig, new_context

    m = random_model()
    B = 4
    chain = sum(checks.quadratic_step_bytes(m.cfg, B, 4).values())
    assert sum(checks.quadratic_step_bytes(m.cfg, B, 4, nodes=16).values()) > 2 * chain
    # A budget the chain's step fits (with room for the reference attention's mask) and a 16-node tree's does not.
    monkeypatch.setattr(checks, "QUADRATIC_BUDGET_BYTES", 2 * chain)
    new_context(m, GenerationConfig(max_new_tokens=4, block_size=B), 3, "spec-quadratic")
    new_context(m, GenerationConfig(max_new_tokens=4, block_size=B, tree_nodes=B), 3, "spec-quadratic")
    with pytest.raises(ValueError, match=r"^tree_nodes=16, block_size=4: a spec-quadratic tree step runs "
                                         r"N\(B\+1\) = 80 rows") as e:
        new_context(m, GenerationConfig(max_new_tokens=4, block_size=B, tree_nodes=16), 3, "spec-quadratic")
    assert "GiB" in str(e.value) and "fewer tree_nodes" in str(e.value)
    # auto runs each block's own N (<= B) whatever tree_nodes asks: the same rows as the chain
    new_context(m, GenerationConfig(max_new_tokens=4, block_size=B, tree_nodes=16), 3, "auto")
    new_context(m, GenerationConfig(max_new_tokens=4, block_size=B, tree_nodes=16), 3, "spec-linear")  # N rows


def test_warmup_runs_autos_trees(model, monkeypatch):
    """Model.warmup(tree_nodes=N) runs each tree auto may pick, at auto's node count (so a first tree
    step under auto is not a cold one); without it, chains only."""
    calls = []
    monkeypatch.setattr(model, "generate", lambda prompt, **kw: calls.append(
        (kw.get("mode"), kw.get("block_size"), kw.get("tree_nodes"))))
    model.warmup(block_size=8)
    assert calls and all(n is None for _, _, n in calls)
    calls.clear()
    model.warmup(block_size=8, tree_nodes=64)
    trees = {c for c in calls if c[2] is not None}
    assert trees == {("spec-linear", 8, 8), ("spec-quadratic", 4, 4), ("spec-quadratic", 8, 8)}
    assert ("spec-linear", 8, None) not in calls and ("spec-linear", 4, None) in calls
