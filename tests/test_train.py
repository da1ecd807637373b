"""Training: the joint objective's mask and loss, data split, BPE, trainer determinism / resume, export."""
from __future__ import annotations

import json
import math

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from trikern.cache import KVCache
from trikern.kernels import BIDIRECTIONAL, CAUSAL
from trikern.train import data as D
from trikern.train.bpe import SPECIAL_TOKENS, special_ids, train_bpe
from trikern.train.distill import greedy_continue
from trikern.train.objective import add_noise, joint_hidden, joint_loss, joint_loss_from_logits, joint_mask
from trikern.train.trainer import TrainConfig, Trainer

from util import random_model, tiny_config


# -- mask -----------------------------------------------------------------------------------------
def mask_by_blocks(N, B):
    """The SPEC §6 mask written block by block with slices (independent of joint_mask's index algebra)."""
    m = torch.zeros(2 * N, 2 * N, dtype=torch.bool)
    for b in range(N // B):
        rows = slice(b * B, (b + 1) * B)
        m[rows, b * B:(b + 1) * B] = True  # own noisy block
        m[rows, N:N + b * B] = True  # clean copies of earlier blocks
    for i in range(N):
        m[N + i, N:N + i + 1] = True  # clean causal
    return m


@pytest.mark.parametrize("N,B", [(4, 4), (8, 4), (12, 4), (16, 16), (6, 1), (10, 2)])
def test_joint_mask_matches_block_construction(N, B):
    assert torch.equal(joint_mask(N, B), mask_by_blocks(N, B))


def test_joint_mask_rejects_partial_block():
    with pytest.raises(ValueError, match="multiple of the training block size 4"):
        joint_mask(10, 4)


# -- the joint pass equals the inference patterns --------------------------------------------------
def test_joint_pass_matches_inference_passes():
    """Clean half == a causal pass; noisy block b == a bidirectional pass over a causal cache of
    the clean blocks < b (SPEC §3: the training mask is exactly the inference pattern)."""
    cfg = tiny_config()
    model = random_model(cfg)
    N, B = 12, 4
    g = torch.Generator().manual_seed(3)
    x = torch.randint(0, 90, (2, N), generator=g)
    noisy, _, _ = add_noise(x, cfg.mask_token_id, torch.Generator().manual_seed(4))
    with torch.no_grad():
        h = joint_hidden(model, noisy, x, B)
        for r in range(2):
            clean = model.forward_hidden(x[r], torch.arange(N), _plain_attend(model, CAUSAL))
            torch.testing.assert_close(h[r, 1], clean, rtol=1e-4, atol=1e-4)
            for b in range(N // B):
                cache = KVCache.for_model(cfg, N, torch.float32, "cpu", scratch=N)
                if b:
                    model(x[r, :b * B], torch.arange(b * B), cache, CAUSAL, write_cache=True)
                    cache.commit(b * B)
                blk = slice(b * B, (b + 1) * B)
                logits = model(noisy[r, blk], torch.arange(b * B, (b + 1) * B), cache, BIDIRECTIONAL)
                torch.testing.assert_close(model.logits(h[r, 0, blk]), logits, rtol=1e-4, atol=1e-4)


def _plain_attend(model, mode):
    from trikern.kernels import attention  # noqa: PLC0415

    empty = torch.empty(model.cfg.num_key_value_heads, 0, model.cfg.head_dim)
    return lambda i, q, k, v: attention(q, k, v, empty, empty, 0, mode, 0, model.scale, backend="torch")


# -- loss -----------------------------------------------------------------------------------------
def test_loss_formula_hand_checkable():
    """Uniform logits: every CE is ln V, so the total is (0.3 * sum(ln V / p) + n_ar ln V) / (n_masked + N)."""
    V = 8
    ar = torch.zeros(5, V)
    diff = torch.zeros(3, V)
    p = torch.tensor([0.5, 0.5, 0.25])
    lp = joint_loss_from_logits(ar, torch.tensor([1, 2, 3, 4, 5]), diff, torch.tensor([0, 1, 2]), p, N_total=6)
    lnv = math.log(V)
    expect = (0.3 * (lnv / 0.5 + lnv / 0.5 + lnv / 0.25) + 5 * lnv) / (3 + 6)
    assert lp.total.item() == pytest.approx(expect, rel=1e-6)
    assert lp.ar_ce == pytest.approx(lnv) and lp.diff_ce == pytest.approx(lnv) and lp.masked == 3


def test_joint_loss_against_direct_computation():
    cfg = tiny_config()
    model = random_model(cfg, std=0.05)
    N, B = 8, 4
    x = torch.randint(0, 90, (3, N), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        lp = joint_loss(model, x, B, torch.Generator().manual_seed(9))
        noisy, masked, p = add_noise(x, cfg.mask_token_id, torch.Generator().manual_seed(9))
        h = joint_hidden(model, noisy, x, B)
        total, n_masked = 0.0, 0
        for r in range(3):
            logits_n, logits_c = model.logits(h[r, 0]), model.logits(h[r, 1])
            for i in range(N):
                if masked[r, i]:
                    total += 0.3 * F.cross_entropy(logits_n[i], x[r, i]).item() / p[r].item()
                    n_masked += 1
                if i + 1 < N:
                    total += F.cross_entropy(logits_c[i], x[r, i + 1]).item()
    assert lp.masked == n_masked
    assert lp.total.item() == pytest.approx(total / (n_masked + 3 * N), rel=1e-4)


def test_noise_ratio_range_and_mask_id():
    x = torch.randint(0, 50, (400, 32), generator=torch.Generator().manual_seed(0))
    noisy, masked, p = add_noise(x, 99, torch.Generator().manual_seed(1))
    assert p.min() >= 1e-3 and p.max() <= 1
    assert torch.equal(noisy == 99, masked) and torch.equal(noisy[~masked], x[~masked])
    frac = masked.float().mean(1)
    assert (frac - p).abs().mean() < 0.08  # per-sequence ratio follows p
    assert p.mean().item() == pytest.approx(0.5, abs=0.06)


# -- data -----------------------------------------------------------------------------------------
def _write_corpus(root, n=12):
    for i in range(n):
        d = root / ("pkg" if i % 3 == 0 else "")
        d.mkdir(parents=True, exist_ok=True)
        (d / f"mod{i}.py").write_text(f"def f{i}(x):\n    return x * {i} + {i * i}\n\nclass C{i}:\n    pass\n" * 5)


def test_split_is_by_whole_files_and_deterministic(tmp_path):
    _write_corpus(tmp_path)
    train, held = D.read_split(tmp_path, heldout_percent=30)
    train2, held2 = D.read_split(tmp_path, heldout_percent=30)
    assert [f.rel for f in held] == [f.rel for f in held2] and held
    assert not {f.rel for f in train} & {f.rel for f in held}
    assert len(train) + len(held) == 12


@pytest.mark.parametrize("setup,msg", [("missing", "does not exist"), ("file", "is a file"), ("empty", "no .py files")])
def test_bad_data_path_errors(tmp_path, setup, msg):
    path = tmp_path / "data"
    if setup == "file":
        path.write_text("x")
    elif setup == "empty":
        path.mkdir()
    with pytest.raises(D.DataError, match=msg) as e:
        D.read_split(path)
    assert str(path) in str(e.value)


def test_sample_windows_pure_function_of_seed_and_step():
    s = torch.arange(1000, dtype=torch.int32)
    a = D.sample_windows(s, 4, 16, seed=1, step=5)
    assert torch.equal(a, D.sample_windows(s, 4, 16, seed=1, step=5))
    assert not torch.equal(a, D.sample_windows(s, 4, 16, seed=1, step=6))
    assert torch.equal(a[:, 1:] - a[:, :-1], torch.ones(4, 15, dtype=torch.long))  # contiguous windows


# -- BPE ------------------------------------------------------------------------------------------
def test_bpe_special_tokens_and_roundtrip():
    texts = ["def add(a, b):\n    return a + b\n", "for i in range(10):\n    print(i)\n"] * 20
    tok = train_bpe(texts, vocab_size=300)
    ids = special_ids(tok)
    assert [ids[t] for t in SPECIAL_TOKENS] == list(range(len(SPECIAL_TOKENS)))
    assert tok.get_vocab_size() <= 300
    src = "def add(x, y):\n\treturn 'é' + x\n"
    assert tok.decode(tok.encode(src).ids) == src  # byte-level: lossless on unseen characters
    assert tok.encode("<|mask|><think>").ids == [ids["<|mask|>"], ids["<think>"]]
    assert train_bpe(texts, vocab_size=300).to_str() == tok.to_str()


# -- distillation ---------------------------------------------------------------------------------
def test_greedy_continue_matches_step_by_step_argmax():
    cfg = tiny_config()
    model = random_model(cfg)
    prefix = torch.randint(0, 90, (2, 3), generator=torch.Generator().manual_seed(2))
    out = greedy_continue(model, prefix, 8, forbid=(cfg.mask_token_id,))
    assert torch.equal(out[:, :3], prefix)
    for r in range(2):
        seq = prefix[r].tolist()
        while len(seq) < 8:
            logits = model(torch.tensor(seq), torch.arange(len(seq)))[-1]
            logits[cfg.mask_token_id] = float("-inf")
            seq.append(int(logits.argmax()))
        assert out[r].tolist() == seq


# -- trainer --------------------------------------------------------------------------------------
def _tiny_train_config(tmp_path, **kw):
    corpus = tmp_path / "corpus"
    if not corpus.exists():
        _write_corpus(corpus, 20)
    base = dict(vocab_size=300, hidden_size=32, intermediate_size=48, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, max_position_embeddings=64, block_size=4, seq_len=16, batch_size=4,
                heldout_percent=20, data_root=str(corpus), steps=4, warmup=2, ckpt_every=2, eval_every=2,
                eval_batches=1, distill_start=2, distill_every=2, lr=3e-3)
    base.update(kw)
    return TrainConfig(**base)


@pytest.mark.parametrize("distill_ar_loss", [True, False])
def test_resume_is_exact(tmp_path, distill_ar_loss):
    kw = dict(distill_ar_loss=distill_ar_loss, distill_start=1)
    straight = Trainer(_tiny_train_config(tmp_path, steps=4, **kw), tmp_path / "a", progress=False)
    m1 = straight.run()
    # same run interrupted after 2 steps (mid distillation pool), resumed in a fresh Trainer
    Trainer(_tiny_train_config(tmp_path, steps=2, **kw), tmp_path / "b", progress=False).run()
    m2 = Trainer(_tiny_train_config(tmp_path, steps=4, **kw), tmp_path / "b", progress=False).run()
    for (n, p1), (_, p2) in zip(m1.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(p1, p2), n
    log = [json.loads(line) for line in (tmp_path / "a" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log] == [0, 1, 2, 3]
    assert "heldout_ar_ce" in log[-1]


def test_training_learns(tmp_path):
    tr = Trainer(_tiny_train_config(tmp_path, steps=30, ckpt_every=30, eval_every=30, distill_start=-1), tmp_path / "r",
                 progress=False)
    before = tr.evaluate()
    tr.run()
    after = tr.evaluate()
    assert after["heldout_ar_ce"] < before["heldout_ar_ce"] - 1.0
    assert after["heldout_diff_ce"] < before["heldout_diff_ce"] - 1.0


def test_run_folder_with_other_settings_is_refused(tmp_path):
    Trainer(_tiny_train_config(tmp_path, steps=0), tmp_path / "r", progress=False)
    with pytest.raises(ValueError, match="different settings.*seq_len"):
        Trainer(_tiny_train_config(tmp_path, steps=0, seq_len=32), tmp_path / "r", progress=False)


def test_export_layout(tmp_path):
    tr = Trainer(_tiny_train_config(tmp_path, steps=2), tmp_path / "r", progress=False)
    model = tr.run()
    out = tmp_path / "r" / "export"
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["model_type"] == "nemotron_labs_diffusion"
    ids = special_ids(tr.tok)
    assert cfg["mask_token_id"] == ids["<|mask|>"]
    assert cfg["eos_token_id"] == [ids["<|im_end|>"], ids["<|endoftext|>"]] and cfg["block_size"] == 8
    tensors = load_file(out / "model.safetensors")
    L = cfg["num_hidden_layers"]
    assert len(tensors) == 9 * L + 3 and "diffusion_head.weight" in tensors
    assert "encoder.layers.1.self_attn.o_proj.weight" in tensors and "encoder.norm.weight" in tensors
    assert all(t.dtype == torch.bfloat16 for t in tensors.values())
    torch.testing.assert_close(tensors["diffusion_head.weight"].float(), model.lm_head.weight.bfloat16().float())
    tc = json.loads((out / "tokenizer_config.json").read_text())
    assert tc["eos_token"] == "<|im_end|>" and tc["mask_token"] == "<|mask|>"
    import jinja2  # noqa: PLC0415

    tmpl = jinja2.Environment().from_string(tc["chat_template"])
    msgs = [{"role": "user", "content": "hi"}]
    assert tmpl.render(messages=msgs, add_generation_prompt=True, enable_thinking=False) == \
        "<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n<think>\n\n</think>\n\n"
    assert tmpl.render(messages=msgs, add_generation_prompt=True).endswith("<|im_start|>assistant\n")


def test_causal_nll_matches_plain_forward():
    from trikern.train.distill import causal_nll  # noqa: PLC0415

    cfg = tiny_config()
    model = random_model(cfg, std=0.05)
    w = torch.randint(0, 90, (3, 10), generator=torch.Generator().manual_seed(5))
    nll, count = causal_nll(model, w)
    expect = sum(F.cross_entropy(model(w[r], torch.arange(10))[:-1], w[r, 1:], reduction="sum").item() for r in range(3))
    assert count == 27 and nll == pytest.approx(expect, rel=1e-4)


def test_heldout_prompts_fixed_order_and_length():
    from trikern.train.evaluate import heldout_prompts  # noqa: PLC0415

    files = [D.SourceFile(f"m{i}.py", "x = 1\n" * (i + 1)) for i in range(8)]
    tok = train_bpe([f.text for f in files], vocab_size=270)
    got = heldout_prompts(tok, files, 3, 4)
    assert got == heldout_prompts(tok, list(reversed(files)), 3, 4)  # independent of listing order
    assert all(len(ids) == 4 for _, ids in got)
    with pytest.raises(ValueError, match="only"):
        heldout_prompts(tok, files, 8, 10**6)


def test_init_from_starts_at_the_source_weights(tmp_path):
    src = Trainer(_tiny_train_config(tmp_path, steps=2, distill_start=-1), tmp_path / "a", progress=False)
    src.run()
    tr = Trainer(_tiny_train_config(tmp_path, steps=2, distill_start=-1, init_from=str(tmp_path / "a")), tmp_path / "b",
                 progress=False)
    assert tr.step == 0
    for (n, p1), (_, p2) in zip(src.model.state_dict().items(), tr.model.state_dict().items()):
        assert torch.equal(p1, p2), n
    assert (tmp_path / "b" / "tokenizer.json").read_text() == (tmp_path / "a" / "tokenizer.json").read_text()
    with pytest.raises(D.DataError, match="no ckpt.pt"):
        Trainer(_tiny_train_config(tmp_path, init_from=str(tmp_path / "nothing")), tmp_path / "c", progress=False)


def test_ar_keep_drops_exactly_those_targets():
    cfg = tiny_config()
    model = random_model(cfg, std=0.05)
    x = torch.randint(0, 90, (2, 8), generator=torch.Generator().manual_seed(1))
    full = joint_loss(model, x, 4, torch.Generator().manual_seed(2))
    keep = torch.ones(2, 7, dtype=torch.bool)
    same = joint_loss(model, x, 4, torch.Generator().manual_seed(2), ar_keep=keep)
    assert same.total.item() == pytest.approx(full.total.item(), rel=1e-6)
    keep[1, 3:] = False
    part = joint_loss(model, x, 4, torch.Generator().manual_seed(2), ar_keep=keep)
    with torch.no_grad():
        clean = model.logits(model.forward_hidden(x[1], torch.arange(8), _plain_attend(model, CAUSAL)))
        dropped = F.cross_entropy(clean[3:7], x[1, 4:8], reduction="sum").item()
    denom = full.masked + 16
    assert part.total.item() == pytest.approx(full.total.item() - dropped / denom, rel=1e-4)


def test_distinct_ngram_ratio():
    from trikern.train.evaluate import distinct_ngram_ratio  # noqa: PLC0415

    assert distinct_ngram_ratio([[1, 2, 3, 4, 5, 6]]) == 1.0
    assert distinct_ngram_ratio([[7] * 10]) == pytest.approx(1 / 7)
