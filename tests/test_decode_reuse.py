"""Prefix reuse: a generation may start from the previous one's cache, keeping the K/V of the
longest common token prefix and prefilling only the rest. In every mode the tokens equal those of a
fresh generation (fp32: a reused decode-time K/V equals a prefilled one up to rounding far below
what moves an argmax on this model), and the cache grows by copy when the old one is too small."""
import pytest
import torch
from util import random_model, tiny_config

from trikern.decode import MODES, GenerationConfig, decode, new_context


@pytest.fixture(scope="module")
def model():
    return random_model(tiny_config(), seed=11)


def generate(model, prompt, mode, reuse=None, n=12):
    ctx = new_context(model, GenerationConfig(max_new_tokens=n, block_size=4), len(prompt), mode, reuse=reuse)
    out = [t for c in decode(ctx, torch.tensor(prompt), mode) for t in c]
    return out, ctx


@pytest.mark.parametrize("mode", MODES)
def test_second_turn_reuses_the_first(model, mode):
    first = [5, 9, 2, 7, 7, 1]
    out1, ctx1 = generate(model, first, mode)
    # the cache holds a prefix of prompt + output: all but the newest token, or less when the last
    # step's work was skipped (diffusion does not commit a block that ends the generation)
    held = (first + out1)[:int(ctx1.cache.length)]
    assert len(first) <= len(held) <= len(first + out1) - 1
    second = first + out1 + [3, 4]
    got, ctx2 = generate(model, second, mode, reuse=(ctx1.cache, len(held)), n=20)
    want, fresh = generate(model, second, mode, n=20)
    assert got == want
    assert ctx2.stats.cached_tokens == len(held) and fresh.stats.cached_tokens == 0
    assert ctx2.cache is not ctx1.cache  # 20 new tokens did not fit: grown by copy


def test_diverging_prompt_keeps_only_the_common_prefix(model):
    out1, ctx1 = generate(model, [1, 2, 3, 4, 5, 6, 7, 8], "ar", n=30)
    prompt = [1, 2, 3, 9, 9]
    got, ctx2 = generate(model, prompt, "spec-linear", reuse=(ctx1.cache, 3), n=8)
    want, _ = generate(model, prompt, "spec-linear", n=8)
    assert got == want and ctx2.stats.cached_tokens == 3
    assert ctx2.cache is ctx1.cache  # large enough: reused in place


def test_whole_prompt_cached_still_feeds_its_last_token(model):
    out1, ctx1 = generate(model, [4, 4, 2], "ar", n=30)
    got, ctx2 = generate(model, [4, 4, 2], "spec-quadratic", reuse=(ctx1.cache, 3), n=6)
    want, _ = generate(model, [4, 4, 2], "spec-quadratic", n=6)
    assert got == want and ctx2.stats.cached_tokens == 2
