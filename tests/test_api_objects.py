"""The API's objects: `stream()` returns a Stream whose `.result` is the finished GenerationResult
(also after close()), and a PromptCache is a prefix cache the caller holds, one per conversation."""
import itertools

import pytest
import torch
from util import random_model

import trikern
from trikern.api import Model, Stream
from trikern.prompt_cache import PromptCache

PROMPT = "def main():\n"


@pytest.fixture(scope="module")
def m():
    return trikern.load(device="cpu", dtype=torch.float32)


@pytest.mark.parametrize("mode", ["ar", "spec-linear"])
def test_stream_result_equals_generate(m, mode):
    s = m.stream(PROMPT, mode=mode, max_new_tokens=16, reuse_prefix=False)
    assert isinstance(s, Stream) and s.result is None
    pieces = list(s)
    r = m.generate(PROMPT, mode=mode, max_new_tokens=16, reuse_prefix=False)
    assert s.result is not None and "".join(pieces) == s.result.text
    assert (s.result.text, s.result.token_ids, s.result.finish_reason) == (r.text, r.token_ids, r.finish_reason)
    assert s.result.stats.keys() == r.stats.keys()
    for key in ("mode", "prompt_tokens", "generated_tokens", "forwards", "cached_tokens"):
        assert s.result.stats[key] == r.stats[key]
    s.close()  # after the end: nothing changes
    assert s.result.token_ids == r.token_ids


def test_chat_stream_result_equals_chat(m):
    msgs = [{"role": "user", "content": "Write a function that adds two numbers."}]
    s = m.chat_stream(msgs, max_new_tokens=10, reuse_prefix=False)
    text = "".join(s)
    r = m.chat(msgs, max_new_tokens=10, reuse_prefix=False)
    assert text == s.result.text == r.text and s.result.token_ids == r.token_ids


def test_result_after_break_and_close(m):
    full = m.generate(PROMPT, max_new_tokens=24, reuse_prefix=False)
    s = m.stream(PROMPT, max_new_tokens=24, reuse_prefix=False)
    seen = []
    for piece in s:
        seen.append(piece)
        if len(seen) == 3:
            break
    assert s.result is None  # suspended between steps, not finished
    s.close()
    r = s.result
    assert r.finish_reason == "cancelled" and 3 <= len(r.token_ids) < len(full.token_ids)
    assert r.token_ids == full.token_ids[:len(r.token_ids)] and r.stats["generated_tokens"] == len(r.token_ids)
    assert r.text.startswith("".join(seen)) and full.text.startswith(r.text.rstrip("\ufffd"))
    assert list(s) == []  # closed: no more pieces
    # the stopped stream left its cache (prompt + what it produced) for the next request
    again = m.generate(PROMPT, max_new_tokens=24)
    assert again.stats["cached_tokens"] == again.stats["prompt_tokens"] - 1 and again.token_ids == full.token_ids


def test_close_before_the_first_piece_and_with_block(m):
    s = m.stream(PROMPT, max_new_tokens=8, reuse_prefix=False)
    s.close()
    assert s.result.token_ids == [] and s.result.text == "" and s.result.finish_reason == "cancelled"
    with m.stream(PROMPT, max_new_tokens=8) as s:
        first = next(s)
    assert s.result.finish_reason == "cancelled" and s.result.text.startswith(first)


def test_should_stop_result(m):
    calls = itertools.count()
    s = m.stream(PROMPT, max_new_tokens=40, should_stop=lambda: next(calls) >= 2, reuse_prefix=False)
    assert "".join(s) == s.result.text and len(s.result.token_ids) == 2 and s.result.finish_reason == "cancelled"


def _turn(history, reply, question):
    return [*history, {"role": "assistant", "content": reply}, {"role": "user", "content": question}]


@pytest.mark.parametrize("mode", ["ar", "spec-linear"])
def test_two_prompt_caches_two_conversations(m, mode):
    m.reset()
    a, b = m.make_prompt_cache(), m.make_prompt_cache()
    assert isinstance(a, PromptCache) and len(a) == len(b) == 0
    conv_a = [{"role": "user", "content": "Write a function that adds two numbers."}]
    conv_b = [{"role": "user", "content": "Print the numbers from one to ten, in a loop."}]
    kw = dict(mode=mode, max_new_tokens=16)
    a1 = m.chat(conv_a, prompt_cache=a, **kw)
    b1 = m.chat(conv_b, prompt_cache=b, **kw)
    assert a1.stats["cached_tokens"] == b1.stats["cached_tokens"] == 0
    assert len(a) >= a1.stats["prompt_tokens"] and a.token_ids[:3] == m.chat_prompt(conv_a)[:3]
    assert len(m.prompt_cache) == 0  # the default cache is not touched by requests that bring their own
    conv_a, conv_b = _turn(conv_a, a1.text, "Now subtract."), _turn(conv_b, b1.text, "Now count down.")
    a2 = m.chat(conv_a, prompt_cache=a, **kw)
    b2 = m.chat(conv_b, prompt_cache=b, **kw)
    for r1, r2, conv in ((a1, a2, conv_a), (b1, b2, conv_b)):
        # each second turn reuses its own conversation's first turn, not the other's
        assert r2.stats["cached_tokens"] > r1.stats["prompt_tokens"] // 2
        fresh = m.chat(conv, reuse_prefix=False, **kw)
        assert fresh.stats["cached_tokens"] == 0 and r2.token_ids == fresh.token_ids


def test_default_prompt_cache_and_reset(m):
    m.reset()
    assert len(m.prompt_cache) == 0
    r = m.generate(PROMPT, max_new_tokens=6)
    assert len(m.prompt_cache) > r.stats["prompt_tokens"] - 1
    assert m.prompt_cache.token_ids[:r.stats["prompt_tokens"]] == m.tokenizer.encode(PROMPT, add_special_tokens=True)
    m.reset()
    assert len(m.prompt_cache) == 0 and m.generate(PROMPT, max_new_tokens=6).stats["cached_tokens"] == 0
    c = m.make_prompt_cache()
    m.generate(PROMPT, max_new_tokens=6, prompt_cache=c)
    assert len(c) > 0
    c.reset()
    assert len(c) == 0 and c.cache is None


def test_refused_request_leaves_the_prompt_cache(m):
    c = m.make_prompt_cache()
    m.generate(PROMPT, max_new_tokens=6, prompt_cache=c)
    held = c.token_ids
    with pytest.raises(ValueError, match="mode='beam'"):
        m.generate(PROMPT, mode="beam", prompt_cache=c)
    with pytest.raises(ValueError, match="context"):
        m.generate([7] * 600, max_new_tokens=1, prompt_cache=c)
    assert c.token_ids == held
    assert m.generate(PROMPT, max_new_tokens=6, prompt_cache=c).stats["cached_tokens"] > 0


def test_prompt_cache_of_another_model_is_one_value_error(m):
    other = Model(random_model())  # a different config (tiny NLD: other sizes, vocabulary, context)
    c = other.make_prompt_cache()
    other.generate([1, 2, 3], max_new_tokens=4, prompt_cache=c)
    with pytest.raises(ValueError, match=r"prompt_cache: made for a model with a different config .*make_prompt_cache"):
        m.generate(PROMPT, max_new_tokens=4, prompt_cache=c)
    with pytest.raises(ValueError, match=r"prompt_cache: made for bfloat16 on cpu"):
        m.generate(PROMPT, max_new_tokens=4, prompt_cache=PromptCache(m.cfg, torch.bfloat16, "cpu"))
    with pytest.raises(ValueError, match=r"prompt_cache=.*expected a PromptCache"):
        m.generate(PROMPT, max_new_tokens=4, prompt_cache="conversation-1")
    assert len(c) > 0  # the refused request left it alone
