"""`trikern bench`: the prompt-set bench, the synthetic roofline bench, the HF peer and option errors.

Tiny settings only: the figures are not checked for speed (that is what the bench is for), but
every column is checked for being present and consistent with the counts it is derived from.
"""
import csv
import json
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest
from synth import write_chat_checkpoint, write_json
from util import CHILD_ENV as ENV
from util import nld_config_dict

import trikern
from trikern.bench import promptset as P
from trikern.bench import synthetic as S
from trikern.bench.prompts import PromptError, load_prompts
from trikern.cli import main



def run(capsys, *args):
    rc = main(["bench", *(str(a) for a in args)])
    out, err = capsys.readouterr()
    return rc, out, err


# -- the prompt-set bench ---------------------------------------------------------------------------
def test_prompt_bench_on_embedded_model_writes_json_and_csv(tmp_path, capsys):
    j, c = tmp_path / "b.json", tmp_path / "b.csv"
    rc, out, err = run(capsys, "--limit", 2, "--modes", "spec-quadratic,ar", "--block-sizes", 4, "--max-new-tokens", 8,
                       "--json", j, "--csv", c)
    assert rc == 0, err
    res = json.loads(j.read_text())
    rows = {r["label"]: r for r in res["rows"]}
    assert list(rows) == ["spec-quadratic B4", "ar"]  # in --modes order; ar once, without a block size
    assert res["env"]["torch"] and res["env"]["triton"] and res["env"]["device_name"]
    assert res["settings"]["prompt_ids"] == [p.id for p in load_prompts()[:2]]
    gens = res["generations"]
    assert len(gens) == 4 and {g["mode"] for g in gens} == {"ar", "spec-quadratic"}
    for label, r in rows.items():
        mine = [g for g in gens if g["mode"] == r["mode"]]
        assert r["generated_tokens"] == sum(len(g["token_ids"]) for g in mine) > 0
        assert all(len(g["token_ids"]) <= 8 for g in mine)
        assert r["forwards"] == sum(g["stats"]["forwards"] for g in mine)
        assert r["tokens_per_forward"] == pytest.approx(r["generated_tokens"] / r["forwards"])
        assert r["tokens_per_second"] > 0 and r["prefill_tokens_per_second"] > 0 and r["peak_memory_mb"] > 0
        assert sum(k["generated_tokens"] for k in r["by_kind"].values()) == r["generated_tokens"]
    q = rows["spec-quadratic B4"]
    assert q["tokens_per_forward"] >= 1  # one forward per step, at least one token per step
    assert sum(q["acceptance_histogram"].values()) == q["forwards"]
    assert max(int(k) for k in q["acceptance_histogram"]) <= 4 + 1
    assert q["equal_ar"] in ("0/2", "1/2", "2/2") and rows["ar"]["equal_ar"] is None  # ar ran after, still compared
    assert q["tok_s_ratio_vs_ar"] == pytest.approx(q["tokens_per_second"] / rows["ar"]["tokens_per_second"])
    with c.open() as f:
        table = list(csv.DictReader(f))
    assert [r["mode"] for r in table] == ["spec-quadratic", "ar"]
    assert set(P.CSV_COLUMNS) | {"device_name", "torch", "triton"} <= set(table[0])
    assert int(table[0]["generated_tokens"]) == q["generated_tokens"] and table[1]["block_size"] == ""
    assert "spec-quadratic B4" in out and "tok/fwd" in out and "acceptance length histograms" in out


def test_prompt_bench_on_quantized_weights(tmp_path, capsys):
    j = tmp_path / "q.json"
    rc, out, err = run(capsys, "--limit", 1, "--modes", "ar,spec-linear", "--block-sizes", 4, "--max-new-tokens", 8,
                       "--dtype", "float32", "--weights", "int4", "--group-size", 64, "--json", j)
    assert rc == 0, err
    res = json.loads(j.read_text())
    assert res["settings"]["weights"] == "int4" and res["settings"]["group_size"] == 64
    d = json.loads((Path(trikern.__file__).parent / "assets" / "default" / "config.json").read_text())
    H, I, L, V = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"], d["vocab_size"]
    q = d["num_attention_heads"] * d.get("head_dim", H // d["num_attention_heads"])
    kv = d["num_key_value_heads"] * d.get("head_dim", H // d["num_attention_heads"])
    head = 0 if d.get("tie_word_embeddings") else V * H
    assert res["model"]["parameters"] == V * H + head + H + L * (H * (q + 2 * kv) + q * H + 3 * H * I + 2 * H)
    spec = next(r for r in res["rows"] if r["mode"] == "spec-linear")
    assert spec["equal_ar"] == "1/1"  # fp32: lossless relative to AR on the same (quantized) weights


def test_plot_draws_a_png(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    png = tmp_path / "b.png"
    rc, _, err = run(capsys, "--limit", 1, "--modes", "ar,spec-linear", "--max-new-tokens", 4, "--plot", png)
    assert rc == 0, err
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_plot_without_matplotlib_is_one_error_before_measuring(capsys, monkeypatch):
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    rc, out, err = run(capsys, "--limit", 1, "--plot", "x.png")
    assert rc == 2 and "pip install 'trikern[plot]'" in err and out == "" and "[bench]" not in err


def test_peer_hf_on_a_ministral3_shaped_checkpoint(tmp_path, capsys):
    """The NLD checkpoint with YaRN + llama-4 scaling loads as HF Ministral-3; fp32, so greedy agrees."""
    pytest.importorskip("transformers")
    ckpt = write_chat_checkpoint(tmp_path / "ckpt")
    prompts = tmp_path / "p.jsonl"
    prompts.write_text(json.dumps({"id": "t", "kind": "prose", "prompt": "hello there"}) + "\n\n"
                       + json.dumps({"id": "c", "kind": "chat", "messages": [{"role": "user", "content": "hi"}]}))
    j, c = tmp_path / "b.json", tmp_path / "b.csv"
    rc, out, err = run(capsys, "--model", ckpt, "--prompts", prompts, "--dtype", "float32", "--modes", "spec-linear",
                       "--block-sizes", 4, "--max-new-tokens", 6, "--peer", "hf", "--json", j, "--csv", c)
    assert rc == 0, err
    res = json.loads(j.read_text())
    peer = res["peer"]
    assert peer["hf_class"] == "Ministral3ForCausalLM" and peer["tokens_agree"] == "2/2"
    assert [r["mode"] for r in res["rows"]] == ["ar", "spec-linear", "hf"]  # --peer adds the ar it compares with
    ar = res["rows"][0]
    assert peer["ratio"] == pytest.approx(ar["tokens_per_second"] / peer["tokens_per_second"])
    hf_tokens = {g["prompt_id"]: g["token_ids"] for g in res["peer_generations"]}
    ar_tokens = {g["prompt_id"]: g["token_ids"] for g in res["generations"] if g["mode"] == "ar"}
    assert hf_tokens == ar_tokens and all(hf_tokens.values())
    assert "trikern ar / hf" in out and "hf transformers" in out
    with c.open() as f:
        assert [r["tokens_agree"] for r in csv.DictReader(f)] == ["", "", "2/2"]


def test_peer_hf_on_the_embedded_model(capsys, tmp_path):
    """The embedded checkpoint has no llama-4 scaling: HF runs it as a Llama, once per prompt and
    repeat, in turn with trikern's generations."""
    pytest.importorskip("transformers")
    j = tmp_path / "b.json"
    rc, out, err = run(capsys, "--limit", 2, "--modes", "ar", "--dtype", "float32", "--max-new-tokens", 5,
                       "--repeats", 2, "--peer", "hf", "--json", j)
    assert rc == 0, err
    assert "LlamaForCausalLM" in out and "tokens agree on 2/2 prompts" in out
    res = json.loads(j.read_text())
    gens = res["peer_generations"]
    assert sorted((g["prompt_id"], g["repeat"]) for g in gens) == sorted(
        (g["prompt_id"], g["repeat"]) for g in res["generations"])  # one HF run per trikern run
    assert all(g["agree"] and g["decode_s"] > 0 for g in gens)
    hf = res["rows"][-1]
    assert hf["mode"] == "hf" and hf["repeats"] == 2 and hf["generated_tokens"] == sum(len(g["token_ids"]) for g in gens)
    ar = res["rows"][0]
    ar_gens = [g for g in res["generations"] if g["mode"] == "ar"]
    assert ar["tokens_per_second_median"] == pytest.approx(P.median_rate(
        [(g["prompt_id"], g["stats"]["generated_tokens"], g["stats"]["decode_s"]) for g in ar_gens]))
    peer = res["peer"]
    assert hf["tokens_per_second_median"] == peer["tokens_per_second_median"] > 0
    assert peer["ratio_median"] == pytest.approx(ar["tokens_per_second_median"] / peer["tokens_per_second_median"])
    assert "median over repeats" in out


def test_median_rate_ignores_one_slow_repeat_per_prompt():
    # prompt a: 10 tokens in 0.1 s twice and once in 1.0 s (a slow spell); prompt b: 20 tokens, 0.2 s
    gens = [("a", 10, 0.1), ("a", 10, 1.0), ("a", 10, 0.1), ("b", 20, 0.2), ("b", 20, 0.2), ("b", 20, 0.2)]
    assert P.median_rate(gens) == pytest.approx(30 / 0.3)
    assert P.median_rate([("a", 10, 0.1), ("a", 30, 0.3)]) == pytest.approx(20 / 0.2)  # two repeats: the mean
    assert P.median_rate([]) == 0.0


# -- the synthetic bench ----------------------------------------------------------------------------------
def tiny_config(tmp_path, **kw) -> Path:
    return write_json(tmp_path / "config.json", nld_config_dict(**kw))


def test_synthetic_rows_per_width_and_bytes_moved(tmp_path, capsys):
    j = tmp_path / "s.json"
    rc, out, err = run(capsys, "--synthetic", tiny_config(tmp_path), "--context", 40, "--widths", "1,3,8",
                       "--modes", "ar,spec-quadratic", "--block-sizes", 2, "--decode-tokens", 4, "--reps", 1,
                       "--dtype", "bfloat16", "--json", j)
    assert rc == 0, err
    res = json.loads(j.read_text())
    d = nld_config_dict()
    H, I, L, V = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"], d["vocab_size"]
    q, kv = d["num_attention_heads"] * d["head_dim"], d["num_key_value_heads"] * d["head_dim"]
    layer = H * (q + 2 * kv) + q * H + 3 * H * I + 2 * H
    params = V * H + L * layer + H + H * V  # embedding, layers, final norm, untied head
    assert res["shape"]["parameters"] == params
    per_token_kv = 2 * L * kv * 2  # K and V, bf16
    assert [r["T"] for r in res["forward"]] == [1, 3, 8]
    for r in res["forward"]:
        T = r["T"]
        assert r["weight_bytes"] == 2 * (params - V * H + T * H)  # the embedding: only T gathered rows
        assert r["kv_bytes"] == per_token_kv * (40 + T)
        assert r["eager_ms"] > 0 and r["graph_ms"] is None  # no CUDA graphs on CPU
        assert r["gb_per_s"] == pytest.approx(r["bytes"] / (r["eager_ms"] * 1e-3) / 1e9)
        assert r["pct_measured"] == pytest.approx(100 * r["gb_per_s"] / res["bandwidth"]["measured_gb_per_s"])
        assert (r["tokens_per_second"] is not None) == (T == 1)
    assert res["bandwidth"]["measured_gb_per_s"] > 0 and res["bandwidth"]["datasheet_gb_per_s"] is None
    assert [(r["mode"], r["block_size"]) for r in res["decode"]] == [("ar", None), ("spec-quadratic", 2)]
    assert all(r["generated_tokens"] == 4 and r["ms_per_forward"] > 0 for r in res["decode"])  # no EOS stop
    lines = out.splitlines()
    assert any(line.split()[:1] == ["8"] for line in lines) and "spec-quadratic B2" in out


@pytest.mark.parametrize("weights", ["int4", "fp8"])
def test_synthetic_quantized_weights_count_the_quantized_bytes(tmp_path, capsys, weights):
    j = tmp_path / "q.json"
    extra = ["--group-size", 32] if weights == "int4" else []
    rc, out, err = run(capsys, "--synthetic", tiny_config(tmp_path), "--context", 16, "--widths", "1,4",
                       "--decode-tokens", 2, "--modes", "ar", "--reps", 1, "--dtype", "bfloat16",
                       "--weights", weights, *extra, "--json", j)
    assert rc == 0, err
    res = json.loads(j.read_text())
    d = nld_config_dict()
    H, I, L, V = d["hidden_size"], d["intermediate_size"], d["num_hidden_layers"], d["vocab_size"]
    q, kv = d["num_attention_heads"] * d["head_dim"], d["num_key_value_heads"] * d["head_dim"]
    linears = [(q + 2 * kv, H), (H, q), (2 * I, H), (H, I)]  # fused qkv, o, fused gate_up, down: (N, K)
    if weights == "int4":  # nibbles + one bf16 scale per 32 columns of a row (symmetric: no zero points)
        qbytes = sum(N * K // 2 + N * (K // 32) * 2 for N, K in linears)
    else:  # one byte per weight + one fp32 scale per row
        qbytes = sum(N * K + 4 * N for N, K in linears)
    params = V * H + L * (sum(N * K for N, K in linears) + 2 * H) + H + H * V
    assert res["shape"]["parameters"] == params  # the 16-bit count, whatever the weights hold
    assert res["shape"]["weights"] == ("int4 g32" if weights == "int4" else "fp8 e4m3")
    assert res["shape"]["weight_bytes"] == 2 * (2 * V * H + L * 2 * H + H) + L * qbytes
    for r in res["forward"]:
        assert r["weight_bytes"] == 2 * (V * H + r["T"] * H + L * 2 * H + H) + L * qbytes
        assert r["weight_bytes"] < 2 * (params - V * H + r["T"] * H)  # below the bf16 figure
        assert r["pct_measured"] == pytest.approx(100 * r["bytes"] / (r["eager_ms"] * 1e-3) / 1e9
                                                  / res["bandwidth"]["measured_gb_per_s"])
    assert res["decode"][0]["generated_tokens"] == 2 and res["decode"][0]["weight_bytes"] == res["forward"][0]["weight_bytes"]
    assert res["settings"]["weights"] == weights and ("int4 g32" in out or "fp8 e4m3" in out)


def test_synthetic_tree_verify_rows(tmp_path, capsys):
    """--tree-nodes: the verify pass of a linear draft tree per node budget, against the chain's pass
    (issue 25's GPU figure: a 64-node verify against an 8-token one)."""
    j = tmp_path / "t.json"
    rc, out, err = run(capsys, "--synthetic", tiny_config(tmp_path), "--context", 24, "--widths", "1",
                       "--block-sizes", "2,4", "--tree-nodes", "1,4,9", "--decode-tokens", 0, "--reps", 1,
                       "--dtype", "float32", "--json", j)
    assert rc == 0, err
    res = json.loads(j.read_text())
    rows = res["tree_verify"]
    assert [r["nodes"] for r in rows] == [1, 4, 9] and all(r["B"] == 4 for r in rows)
    assert rows[0]["depth"] == 0 and all(1 <= r["depth"] <= 3 for r in rows[1:])  # depths <= B - 1
    for r in rows:
        assert r["eager_ms"] > 0 and r["graph_ms"] is None and r["chain_ms"] > 0
        assert r["x_chain"] == pytest.approx(r["eager_ms"] / r["chain_ms"])
    assert "tree verify passes" in out and res["decode"] == []


def test_synthetic_shipped_name_and_layer_cut():
    cfg, raw = S.load_shape("nld-8b", layers=2)
    assert cfg.num_hidden_layers == 2 and cfg.hidden_size == 4096 and cfg.eos_token_ids == ()
    assert raw["num_hidden_layers"] == 2


def test_datasheet_bandwidth_by_device_name(monkeypatch):
    monkeypatch.delenv("TRIKERN_PEAK_GBS", raising=False)
    assert S.datasheet_gbs("NVIDIA H200") == 4800
    assert S.datasheet_gbs("NVIDIA H100 80GB HBM3") == 3350
    assert S.datasheet_gbs("NVIDIA H100 PCIe") == 2000
    assert S.datasheet_gbs("NVIDIA GB10") == 273
    assert S.datasheet_gbs("Some Future GPU") is None
    monkeypatch.setenv("TRIKERN_PEAK_GBS", "1234")
    assert S.datasheet_gbs("Some Future GPU") == 1234


# -- errors -------------------------------------------------------------------------------------------------
@pytest.mark.parametrize("args,needle", [
    (["--modes", "ar,nope"], "--modes: unknown mode 'nope'"),
    (["--block-sizes", "4,x"], "--block-sizes: 'x'"),
    (["--block-sizes", "0"], "--block-sizes: '0'"),
    (["--prompts", "/no/such/prompts.jsonl"], "--prompts /no/such/prompts.jsonl: file not found"),
    (["--synthetic", "nld-99b"], "unknown config name 'nld-99b'"),
    (["--synthetic", "nld-3b", "--context", "999999"], "--context 999999"),
    (["--synthetic", "nld-3b", "--peer", "hf"], "--peer does not apply with --synthetic"),
    (["--widths", "1,8"], "--widths applies only with --synthetic"),
    (["--tree-nodes", "8"], "--tree-nodes applies only with --synthetic"),
    (["--synthetic", "nld-3b", "--block-sizes", "3", "--tree-nodes", "8,22"], "--tree-nodes 22: at most 21"),
    (["--synthetic", "nld-3b", "--block-sizes", "16", "--tree-nodes", "300"], "--tree-nodes 300: at most 256"),
    (["--group-size", "64"], "--group-size applies only with --weights int4"),
    (["--peer", "hf", "--weights", "fp8"], "--peer hf runs the 16-bit checkpoint"),
    (["--synthetic", "nld-3b", "--weights", "fp8", "--group-size", "64"], "--group-size applies only with --weights int4"),
    (["--synthetic", "nld-3b", "--weights", "int4", "--group-size", "20"], "--group-size 20: expected a positive"),
    (["--peer", "hf", "--temperature", "0.7"], "--peer hf compares greedy outputs"),
    (["--repeats", "0"], "--repeats 0: must be >= 1"),
    (["--max-new-tokens", "many"], "--max-new-tokens"),
    (["--json", "."], "--json .: is a folder"),
])
def test_bad_options_are_one_error_line(capsys, args, needle):
    rc, out, err = run(capsys, *args)
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("trikern bench: error: ") and needle in err, err


def test_prompt_file_errors_name_the_line(tmp_path):
    f = tmp_path / "p.jsonl"
    f.write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(PromptError, match=r"p\.jsonl:2: not valid JSON"):
        load_prompts(f)
    f.write_text('{"prompt": "a", "messages": []}\n')
    with pytest.raises(PromptError, match=r":1: needs exactly one of"):
        load_prompts(f)
    f.write_text('{"id": "x", "prompt": "a"}\n{"id": "x", "prompt": "b"}\n')
    with pytest.raises(PromptError, match="duplicate prompt id"):
        load_prompts(f)


def test_console_script_dispatches_bench():
    r = subprocess.run([sys.executable, "-m", "trikern", "bench", "--modes", "bogus"], capture_output=True, text=True,
                       env=ENV, timeout=120)
    assert r.returncode == 2 and "trikern bench: error: --modes" in r.stderr and "Traceback" not in r.stderr


# -- the shipped prompt set ---------------------------------------------------------------------------------
def test_shipped_prompts_are_mixed_and_not_training_text():
    prompts = load_prompts()
    assert 12 <= len(prompts) <= 20
    kinds = [p.kind for p in prompts]
    assert {"code", "prose", "table", "chat", "mixed", "docstring"} <= set(kinds)
    assert len(set(kinds[:6])) == 6  # interleaved: a short --limit still mixes kinds
    assert any(p.messages for p in prompts)
    # The embedded model trained on the standard library: no prompt may be a piece of it.
    stdlib = Path(sysconfig.get_paths()["stdlib"])
    texts = [p.prompt.strip() for p in prompts if p.prompt]
    for f in stdlib.rglob("*.py"):
        try:
            src = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        hit = [t for t in texts if t in src]
        assert not hit, f"prompt text found in {f}"
