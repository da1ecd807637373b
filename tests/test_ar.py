"""AR decoding over the static cache: equals full recomputation, sampling is seeded, limits hold."""
import pytest
import torch
from util import random_model, tiny_config

from trikern.decode import ContextLengthError, GenerationConfig, decode, new_context
from trikern.sampling import probs, sample


def run(model, prompt, **kw):
    ctx = new_context(model, GenerationConfig(**kw), len(prompt))
    out = [t for chunk in decode(ctx, torch.tensor(prompt), "ar") for t in chunk]
    return out, ctx.stats


def greedy_by_recompute(model, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        logits = model(torch.tensor(ids), torch.arange(len(ids)))
        ids.append(int(logits[-1].argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("prompt_len", [1, 5, 17])
def test_greedy_equals_full_recompute(prompt_len):
    m = random_model(seed=prompt_len)
    prompt = torch.randint(0, 160, (prompt_len,), generator=torch.Generator().manual_seed(1)).tolist()
    out, stats = run(m, prompt, max_new_tokens=12)
    assert out == greedy_by_recompute(m, prompt, 12)
    assert stats.generated_tokens == 12 and stats.prompt_tokens == prompt_len
    assert stats.prefill_forwards == 1 and stats.forwards == 11  # the first token comes from the prefill


def test_seeded_sampling_is_reproducible_and_seed_dependent():
    m = random_model(seed=3)
    a, _ = run(m, [1, 2, 3], max_new_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    b, _ = run(m, [1, 2, 3], max_new_tokens=20, temperature=1.0, top_p=0.9, seed=7)
    c, _ = run(m, [1, 2, 3], max_new_tokens=20, temperature=1.0, top_p=0.9, seed=8)
    assert a == b and a != c


def test_eos_stops_and_is_emitted():
    m = random_model(seed=4)
    full, _ = run(m, [5, 6], max_new_tokens=15)
    eos = full[6]
    out, _ = run(m, [5, 6], max_new_tokens=15, stop_token_ids=(eos,))
    assert out == full[: full.index(eos) + 1]


def test_context_limit():
    m = random_model(tiny_config(max_position_embeddings=16))
    with pytest.raises(ContextLengthError, match="16 tokens.*context is 16"):
        run(m, list(range(16)), max_new_tokens=4)
    out, _ = run(m, list(range(12)), max_new_tokens=10)  # stops at the context end, no write past it
    assert len(out) == 4


def test_thinking_budget_forces_end_think():
    m = random_model(seed=5)
    out, _ = run(m, [1, 2], max_new_tokens=10, thinking_budget=3, end_think_id=42)
    assert out[3] == 42 and 42 not in out[:3]


def test_bad_settings_name_the_parameter():
    m = random_model()
    for kw, name in [({"top_p": 0.0}, "top_p"), ({"temperature": -1.0}, "temperature"),
                     ({"max_new_tokens": -1}, "max_new_tokens"), ({"top_k": -2}, "top_k")]:
        with pytest.raises(ValueError, match=name):
            run(m, [1], **kw)


def test_top_k_top_p_filtering():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]])
    assert (probs(logits, 1.0, top_k=2)[0, 2:] == 0).all()
    p = probs(logits, 1.0, top_p=0.5)  # the top token alone holds ~64% of the mass
    assert p[0, 0] == 1.0
    g = torch.Generator().manual_seed(0)
    draws = torch.stack([sample(logits, 1.0, top_k=3, generator=g) for _ in range(300)])
    assert set(draws.flatten().tolist()) == {0, 1, 2}
