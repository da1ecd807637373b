"""Multi-turn prefix reuse through the API: the next request keeps the longest common token prefix
of the previous generation's cache and prefills only the rest. Outputs equal those without reuse
(fp32), `cached_tokens` reports the reused length, and a stopped stream leaves a usable cache."""
import pytest
import torch

import trikern


@pytest.fixture(scope="module")
def m():
    return trikern.load(device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("mode", ["ar", "spec-quadratic", "auto"])
def test_chat_second_turn_reuses_the_first(m, mode):
    m.reset()
    history = [{"role": "user", "content": "Write a function that adds two numbers."}]
    r1 = m.chat(history, mode=mode, max_new_tokens=24)
    assert r1.stats["cached_tokens"] == 0
    history += [{"role": "assistant", "content": r1.text}, {"role": "user", "content": "Now subtract."}]
    r2 = m.chat(history, mode=mode, max_new_tokens=24)
    fresh = m.chat(history, mode=mode, max_new_tokens=24, reuse_prefix=False)
    assert r2.token_ids == fresh.token_ids
    assert r2.stats["cached_tokens"] > r1.stats["prompt_tokens"] // 2 and fresh.stats["cached_tokens"] == 0


def test_unrelated_prompt_reuses_nothing_and_same_prompt_all_but_one(m):
    m.reset()
    m.generate("import os\n", max_new_tokens=8)
    b = m.generate("Once upon a time", max_new_tokens=8)
    enc = [m.tokenizer.encode(t, add_special_tokens=True) for t in ("import os\n", "Once upon a time")]
    shared = next(i for i, (x, y) in enumerate(zip(*enc)) if x != y)  # the BOS token, if any
    assert b.stats["cached_tokens"] == shared <= 1
    c = m.generate("Once upon a time", max_new_tokens=8)
    assert c.token_ids == b.token_ids and c.stats["cached_tokens"] == c.stats["prompt_tokens"] - 1


def test_stopped_stream_keeps_a_usable_cache(m):
    m.reset()
    s = m.stream("def main():\n", max_new_tokens=40)
    next(s)
    s.close()  # the reader left after one piece (e.g. a client disconnected)
    r = m.generate("def main():\n", max_new_tokens=12)
    assert r.stats["cached_tokens"] > 0
    assert r.token_ids == m.generate("def main():\n", max_new_tokens=12, reuse_prefix=False).token_ids


def test_reuse_prefix_must_be_a_bool(m):
    with pytest.raises(ValueError, match="reuse_prefix"):
        m.generate("x", max_new_tokens=2, reuse_prefix="yes")


def test_should_stop_ends_within_one_step_and_keeps_the_cache(m):
    import itertools

    m.reset()
    calls = itertools.count()
    s = m.stream("def main():\n", max_new_tokens=40, should_stop=lambda: next(calls) >= 3)
    pieces = list(s)
    r = s.result
    assert len(r.token_ids) == 3 and r.finish_reason == "cancelled"  # AR: one token per step
    assert "".join(pieces) == r.text
    again = m.generate("def main():\n", max_new_tokens=10)
    assert again.stats["cached_tokens"] > 0
    assert again.token_ids == m.generate("def main():\n", max_new_tokens=10, reuse_prefix=False).token_ids
    with pytest.raises(ValueError, match="should_stop"):
        m.stream("x", should_stop=True)
