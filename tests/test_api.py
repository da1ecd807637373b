"""trikern.load / generate / stream / chat on a real on-disk checkpoint with a trained tokenizer."""
import pytest
import torch

import trikern
from trikern.decode import GenerationConfig, decode, new_context


@pytest.fixture(scope="module")
def ckpt(chat_ckpt):
    return chat_ckpt


@pytest.fixture(scope="module")
def model(ckpt):
    return trikern.load(ckpt, device="cpu", dtype=torch.float32)


def test_generate_text_and_ids(model):
    r = model.generate("def add(a, b):", max_new_tokens=12)
    ids = model.tokenizer.encode("def add(a, b):", add_special_tokens=True)
    ctx = new_context(model.model, GenerationConfig(max_new_tokens=12, stop_token_ids=(0, 2)), len(ids))
    expect = [t for c in decode(ctx, torch.tensor(ids), "ar") for t in c]
    assert r.token_ids == expect
    assert r.text == model.tokenizer.decode(expect, skip_special_tokens=True)
    for key in ("prompt_tokens", "generated_tokens", "forwards", "tokens_per_second", "prefill_tokens_per_second"):
        assert key in r.stats
    assert r.stats["generated_tokens"] == len(expect) and r.stats["prompt_tokens"] == len(ids)


def test_token_id_prompt_and_bad_ids(model):
    r = model.generate([10, 11, 12], max_new_tokens=5)
    assert len(r.token_ids) <= 5
    with pytest.raises(ValueError, match=r"ids\[1\] = 99999"):
        model.generate([10, 99999], max_new_tokens=2)


def test_stream_concatenates_to_text(model):
    pieces = list(model.stream("Hello", max_new_tokens=20, temperature=0.8, seed=3))
    r = model.generate("Hello", max_new_tokens=20, temperature=0.8, seed=3)
    assert "".join(pieces) == r.text
    assert len(pieces) > 1  # streamed, not one blob (random weights may emit invalid UTF-8: U+FFFD is fine)


def test_stop_string_truncates(model):
    full = model.generate("for i in", max_new_tokens=30, temperature=1.0, seed=1)
    text = full.text
    if len(text) < 4:
        pytest.skip("model produced too little text to cut")
    stop = text[2:4]
    r = model.generate("for i in", max_new_tokens=30, temperature=1.0, seed=1, stop=[stop])
    assert r.text == text[: text.index(stop)]
    assert r.finish_reason == "stop"


def test_chat_uses_template(model):
    msgs = [{"role": "user", "content": "hi"}]
    ids = model.chat_prompt(msgs)
    assert model.tokenizer.decode(ids).endswith("<|im_start|>assistant\n")
    r = model.chat(msgs, max_new_tokens=8)
    assert r.token_ids == model.generate(ids, max_new_tokens=8).token_ids


def test_bad_requests_name_the_parameter(model):
    with pytest.raises(ValueError, match="mode='beam'"):
        model.generate("x", mode="beam")
    with pytest.raises(ValueError, match="top_p"):
        model.generate("x", top_p=2.0)
    with pytest.raises(ValueError, match="context"):
        model.generate([7] * 600, max_new_tokens=1)


def test_missing_model_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope"):
        trikern.load(tmp_path / "nope")


@pytest.mark.parametrize("mode", ["diffusion", "spec-linear", "spec-quadratic"])
def test_every_mode_through_the_api(model, mode):
    ar = model.generate("def add(a, b):", max_new_tokens=20, block_size=4)
    r = model.generate("def add(a, b):", mode=mode, max_new_tokens=20, block_size=4)
    assert r.stats["mode"] == mode and r.stats["forwards"] >= 1 and r.stats["tokens_per_forward"] > 0
    if mode != "diffusion":  # greedy self-speculation is lossless
        assert r.token_ids == ar.token_ids and r.text == ar.text
        assert sum(r.stats["acceptance_lengths"].values()) >= 1


def test_ar_only_checkpoint_rejects_block_modes(tmp_path):
    from synth import write_llama_checkpoint
    m = trikern.load(write_llama_checkpoint(tmp_path / "llama"), device="cpu", dtype=torch.float32)
    assert len(m.generate([1, 2, 3], max_new_tokens=3).token_ids) == 3
    with pytest.raises(ValueError, match="mode='spec-linear' needs a tri-mode checkpoint"):
        m.generate([1, 2, 3], mode="spec-linear")
