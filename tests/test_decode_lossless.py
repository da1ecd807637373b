"""Greedy self-speculation (linear and quadratic) equals AR greedy token for token (fp32)."""
import pytest
import torch
from decode_helpers import prompts, run
from util import random_model, tiny_config

from trikern.decode.strategies import spec_linear

BLOCKS = [1, 2, 4, 8, 16, 32]


@pytest.fixture(scope="module")
def models():
    return [random_model(seed=s) for s in range(3)]


@pytest.mark.parametrize("B", BLOCKS)
@pytest.mark.parametrize("mode", ["spec-linear", "spec-quadratic"])
def test_greedy_spec_equals_ar(models, mode, B):
    # quadratic passes are B(B+1) tokens wide: fewer new tokens at the widest blocks keeps this quick
    new = 24 if mode == "spec-linear" or B <= 8 else 10
    for i, m in enumerate(models):
        for prompt in prompts(3, m.cfg.vocab_size, seed=10 * B + i):
            ar, ar_stats, _ = run(m, prompt, "ar", max_new_tokens=new)
            out, stats, chunks = run(m, prompt, mode, max_new_tokens=new, block_size=B)
            assert out == ar, (mode, B, i, prompt)
            assert stats.generated_tokens == new
            steps = sum(stats.acceptance_lengths.values())
            per_step = 2 if mode == "spec-linear" and B > 1 else 1
            assert stats.forwards == per_step * steps
            # every step produces 1 .. B tokens; the first chunk is the prefill's token
            assert all(1 <= k <= B for k in stats.acceptance_lengths)
            assert len(chunks[0]) == 1 and len(chunks) == steps + 1


def test_partial_acceptance_with_oracle_drafts(monkeypatch):
    """Drafts that follow AR for a random number of tokens, then diverge: exercises truncation to
    every accepted length, the bonus, and the cache state after it. (A random model's own drafts
    are almost never accepted; the trained-model test covers real drafts.)"""
    m = random_model(seed=7)
    prompt = [3, 1, 4, 1, 5]
    total = 60
    ar, _, _ = run(m, prompt, "ar", max_new_tokens=total)
    full = torch.tensor(prompt + ar)
    g = torch.Generator().manual_seed(0)
    B = 8

    def oracle(self, pending):
        n = int(self.ctx.cache.length)  # host reads are fine in a test drafter
        truth = full[n + 1: n + B]
        d = truth.clone()
        k = int(torch.randint(0, B, (1,), generator=g))
        if k < B - 1:
            d[k:] = (d[k:] + 1) % self.ctx.cfg.vocab_size
        return d, None

    monkeypatch.setattr(spec_linear.LinearSpec, "draft", oracle)
    out, stats, _ = run(m, prompt, "spec-linear", max_new_tokens=total - B, block_size=B)
    assert out == ar[: total - B]
    assert len(stats.acceptance_lengths) >= 4  # many different accepted lengths were exercised
    assert max(stats.acceptance_lengths) == B


def test_bf16_model_runs_every_block_mode():
    """Not lossless in bf16 (chunked vs token-by-token rounding); checks shapes and dtypes only."""
    m = random_model(tiny_config(), seed=1, dtype=torch.bfloat16)
    for mode in ["diffusion", "spec-linear", "spec-quadratic"]:
        out, stats, _ = run(m, [1, 2, 3], mode, max_new_tokens=9, block_size=4)
        assert len(out) == 9 and all(0 <= t < m.cfg.vocab_size for t in out)


def test_draft_lora_changes_drafts_only():
    """The draft adapter is on for linear draft passes only: drafts change, the output stays AR's."""
    from trikern.decode import GenerationConfig, new_context

    m = random_model(seed=5)
    g = torch.Generator().manual_seed(1)
    cfg = m.cfg
    for layer in m.layers:
        a = 0.5 * torch.randn(4, cfg.num_attention_heads * cfg.head_dim, generator=g)
        b = 0.5 * torch.randn(cfg.hidden_size, 4, generator=g)
        layer.self_attn.lora = (a, b, 4.0)
    prompt = [2, 7, 1, 8, 2, 8]
    ar, _, _ = run(m, prompt, "ar", max_new_tokens=20)
    drafts = {}
    for on in (True, False):
        out, _, _ = run(m, prompt, "spec-linear", max_new_tokens=20, block_size=8, draft_lora=on)
        assert out == ar
        ctx = new_context(m, GenerationConfig(max_new_tokens=20, block_size=8, draft_lora=on), len(prompt),
                          "spec-linear")
        with torch.inference_mode():
            ctx.prefill(torch.tensor(prompt))
            drafts[on] = spec_linear.LinearSpec(ctx, 8).draft(torch.tensor([ar[0]]))[0].tolist()
    assert drafts[True] != drafts[False]
