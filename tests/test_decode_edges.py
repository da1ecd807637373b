"""Edge cases of every decoding mode: EOS inside a block, budgets, context limit, thinking budget,
block size 1, the mask id, bad settings, stats."""
import pytest
import torch
from decode_helpers import run
from util import random_model, tiny_config

from trikern.decode import ContextLengthError, GenerationConfig, decode, new_context

BLOCK_MODES = ["diffusion", "spec-linear", "spec-quadratic"]
ALL_MODES = ["ar"] + BLOCK_MODES


@pytest.fixture(scope="module")
def model():
    return random_model(seed=2)


@pytest.mark.parametrize("mode", BLOCK_MODES)
@pytest.mark.parametrize("B", [4, 8])
def test_eos_inside_a_block(model, mode, B):
    prompt = [9, 8, 7]
    full, full_stats, _ = run(model, prompt, mode, max_new_tokens=30, block_size=B)
    for k in (B + 1, 2 * B - 2):  # strictly inside the second / third block
        eos = full[k]
        out, stats, chunks = run(model, prompt, mode, max_new_tokens=30, block_size=B, stop_token_ids=(eos,))
        assert out == full[: full.index(eos) + 1]
        assert chunks[-1][-1] == eos
        assert stats.generated_tokens == len(out) and stats.forwards <= full_stats.forwards


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("new", [1, 2, 7, 13])
def test_budget_not_a_multiple_of_the_block(model, mode, new):
    prompt = [4, 4, 2]
    longer, _, _ = run(model, prompt, mode, max_new_tokens=20, block_size=4)
    out, stats, _ = run(model, prompt, mode, max_new_tokens=new, block_size=4)
    assert out == longer[:new] and stats.generated_tokens == new


@pytest.mark.parametrize("mode", ALL_MODES)
def test_zero_budget(model, mode):
    out, stats, chunks = run(model, [1, 2], mode, max_new_tokens=0, block_size=4)
    assert out == [] and chunks == [] and stats.forwards == 0


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("prompt_len", [31, 29, 24])
def test_prompt_near_the_context_limit(mode, prompt_len):
    m = random_model(tiny_config(max_position_embeddings=32), seed=3)
    prompt = torch.randint(0, 160, (prompt_len,), generator=torch.Generator().manual_seed(prompt_len)).tolist()
    ar, _, _ = run(m, prompt, "ar", max_new_tokens=50)
    out, _, _ = run(m, prompt, mode, max_new_tokens=50, block_size=8)
    assert len(out) == 32 - prompt_len  # stops at the context end
    if mode != "diffusion":
        assert out == ar
    with pytest.raises(ContextLengthError, match="32 tokens"):
        run(m, list(range(32)), mode, max_new_tokens=4, block_size=8)


@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_never_writes_past_the_cache(model, mode):
    """A cache too small for a step's chunk is refused before the pass, naming the sizes."""
    from trikern.cache import KVCache

    ctx = new_context(model, GenerationConfig(max_new_tokens=20, block_size=8), 3, mode)
    ctx.cache = KVCache.for_model(model.cfg, 6, torch.float32, "cpu", scratch=0)
    with pytest.raises(RuntimeError, match="KV cache too small"):
        list(decode(ctx, torch.tensor([1, 2, 3]), mode))


@pytest.mark.parametrize("mode", ALL_MODES)
@pytest.mark.parametrize("budget", [0, 3, 4, 6])
def test_thinking_budget(model, mode, budget):
    prompt, end = [5, 6, 7], 42
    kw = dict(max_new_tokens=16, block_size=4, thinking_budget=budget, end_think_id=end)
    out, stats, _ = run(model, prompt, mode, **kw)
    assert len(out) == 16 and out[budget] == end and end not in out[:budget]
    if mode.startswith("spec"):  # after the forced token the continuation is still AR's
        ar, _, _ = run(model, prompt, "ar", **kw)
        assert out == ar
    if mode == "diffusion":
        # the forced token becomes the seed of a fresh block wherever it falls (every mode restarts
        # from it the same way), as in a fresh run over the prefix whose first seed is forced
        cont, _, _ = run(model, prompt + out[:budget], mode, max_new_tokens=16 - budget, block_size=4,
                         thinking_budget=0, end_think_id=end)
        assert out[budget:] == cont


def greedy_no_mask(m, prompt, n):
    ids = list(prompt)
    for _ in range(n):
        logits = m(torch.tensor(ids), torch.arange(len(ids)))[-1]
        logits[m.cfg.mask_token_id] = float("-inf")
        ids.append(int(logits.argmax()))
    return ids[len(prompt):]


@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_block_size_one(model, mode):
    prompt = [3, 30, 60]
    out, stats, _ = run(model, prompt, mode, max_new_tokens=12, block_size=1)
    if mode == "diffusion":  # B = 1 is AR that never emits the mask id: one commit per token
        assert out == greedy_no_mask(model, prompt, 12)
    else:
        assert out == run(model, prompt, "ar", max_new_tokens=12)[0]
        assert set(stats.acceptance_lengths) == {1}
    assert stats.forwards == 11


def mask_loving_model():
    """A model whose AR argmax is very often the mask id."""
    m = random_model(seed=4)
    with torch.no_grad():
        m.lm_head.weight[m.cfg.mask_token_id] = m.lm_head.weight.mean(0) + 0.5 * m.lm_head.weight[0]
        m.lm_head.weight[m.cfg.mask_token_id] *= 4
    return m


def test_diffusion_never_emits_the_mask_id():
    m = mask_loving_model()
    mask = m.cfg.mask_token_id
    ar, _, _ = run(m, [1, 2], "ar", max_new_tokens=24)
    assert mask in ar  # the model does want to emit it
    for T in (0.0, 1.0):
        out, _, _ = run(m, [1, 2], "diffusion", max_new_tokens=24, block_size=4, temperature=T, seed=1)
        assert mask not in out and len(out) == 24


@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_sampling_is_seeded(model, mode):
    kw = dict(max_new_tokens=14, block_size=4, temperature=1.0, top_p=0.95)
    a, _, _ = run(model, [1, 2, 3], mode, seed=7, **kw)
    b, _, _ = run(model, [1, 2, 3], mode, seed=7, **kw)
    c, _, _ = run(model, [1, 2, 3], mode, seed=8, **kw)
    assert a == b and a != c


@pytest.mark.parametrize("mode", BLOCK_MODES)
def test_stats(model, mode):
    out, st, chunks = run(model, [1, 2, 3, 4], mode, max_new_tokens=20, block_size=4)
    d = st.as_dict()
    assert d["mode"] == mode and d["generated_tokens"] == 20 and d["prompt_tokens"] == 4
    assert d["tokens_per_forward"] == pytest.approx(20 / st.forwards, abs=1e-4)
    assert st.decode_s > 0 and st.prefill_s > 0
    phases = {"diffusion": {"denoise", "commit"}, "spec-linear": {"draft", "verify"}, "spec-quadratic": {"step"}}[mode]
    assert set(st.phase_s) == phases and all(v > 0 for v in st.phase_s.values())
    if mode == "diffusion":
        assert not st.acceptance_lengths
        blocks = len(chunks) - 1  # the prefill's seed, then one chunk per block
        assert blocks <= st.forwards <= blocks * 4  # 1..B-1 denoise passes + 1 commit per block
    else:
        assert sum(k * v for k, v in st.acceptance_lengths.items()) >= 19
        assert st.prefill_forwards == (2 if mode == "spec-quadratic" else 1)


def test_diffusion_threshold_zero_reveals_a_block_per_pass(model):
    _, st, _ = run(model, [1, 2, 3], "diffusion", max_new_tokens=17, block_size=4, threshold=0.0)
    assert st.forwards == 8  # 4 blocks (1 + 4*4 = 17 tokens) x (1 denoise + 1 commit)


def test_diffusion_threshold_one_reveals_one_per_pass(model):
    _, st, _ = run(model, [1, 2, 3], "diffusion", max_new_tokens=17, block_size=4, threshold=1.0)
    assert st.forwards == 4 * (3 + 1)


def test_bad_mode_and_missing_mask_token():
    m = random_model(seed=0)
    ctx = new_context(m, GenerationConfig(max_new_tokens=3), 2, "ar")
    with pytest.raises(ValueError, match="mode='spec'"):
        decode(ctx, torch.tensor([1, 2]), "spec")
    with pytest.raises(ValueError, match="sized for mode='ar'"):
        decode(ctx, torch.tensor([1, 2]), "spec-linear")
    llama = random_model(tiny_config(model_type="llama", mask_token_id=None), seed=0)
    with pytest.raises(ValueError, match="mask_token_id"):
        run(llama, [1, 2], "spec-quadratic", max_new_tokens=3, block_size=2)


def test_cuda_graphs_flag_needs_cuda(model):
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(ValueError, match="cuda_graphs=True"):
        run(model, [1, 2], "spec-linear", max_new_tokens=3, block_size=2, cuda_graphs=True)
    out, _, _ = run(model, [1, 2], "spec-linear", max_new_tokens=3, block_size=2, cuda_graphs=False)
    assert len(out) == 3


def test_registry_covers_every_mode():
    from trikern.decode import STRATEGIES
    from trikern.decode import MODES, STEP_MODES
    from trikern.decode.registry import TREE_VARIANTS
    # a draft-tree strategy is asked for as its chain's mode plus tree_nodes: not a mode of its own
    variants = {c.mode for c in TREE_VARIANTS.values()}
    assert tuple(m for m in STRATEGIES if m not in variants) == STEP_MODES and MODES == (*STEP_MODES, "auto")
