"""Self-speculation over draft trees (`tree_nodes=N`): greedy output equals AR token for token (fp32),
the K = 1, N = B tree is today's chain (same outputs and stats), drafts accepted through a sibling
or deep in the tree keep the cache right, the forced token and auto still give AR's output, and on
the embedded model trees accept more per forward than the chain."""
from pathlib import Path

import pytest
import torch
from decode_helpers import prompts, run, run_cycle
from util import random_model

from trikern.decode import GenerationConfig, new_context
from trikern.decode.strategies import tree_quadratic
from trikern.decode.strategies.tree_linear import TreeLinear
from trikern.decode.strategies.tree_quadratic import TreeQuadratic

TREE_OF = {"spec-linear": "tree-linear", "spec-quadratic": "tree-quadratic"}


@pytest.fixture(scope="module")
def models():
    return [random_model(seed=s) for s in range(2)]


@pytest.mark.parametrize("mode", ["spec-linear", "spec-quadratic"])
@pytest.mark.parametrize("B", [1, 2, 4, 8, 16])
def test_greedy_tree_equals_ar(models, mode, B):
    new = 20 if mode == "spec-linear" or B <= 8 else 8
    for i, m in enumerate(models):
        for prompt in prompts(2, m.cfg.vocab_size, seed=7 * B + i):
            ar, _, _ = run(m, prompt, "ar", max_new_tokens=new)
            for N in sorted({1, B, 2 * B + 3, 40}):
                out, stats, chunks = run(m, prompt, mode, max_new_tokens=new, block_size=B, tree_nodes=N)
                assert out == ar, (mode, B, N, i, prompt)
                steps = sum(stats.acceptance_lengths.values())
                assert stats.forwards == (2 if mode == "spec-linear" and B > 1 else 1) * steps
                assert all(1 <= k <= B for k in stats.acceptance_lengths)
                assert set(stats.by_strategy) == {f"{TREE_OF[mode]}/{B}"} and stats.tree_nodes == N
                assert len(chunks) == steps + 1


def test_chain_is_the_default(models):
    m = models[0]
    for mode in ("spec-linear", "spec-quadratic"):
        _, stats, _ = run(m, [1, 2, 3], mode, max_new_tokens=6, block_size=4)
        assert set(stats.by_strategy) == {f"{mode}/4"} and stats.tree_nodes is None
        assert stats.as_dict()["tree_nodes"] is None


@pytest.fixture(scope="module")
def embedded():
    from trikern.loading import load_model

    return load_model(Path(__file__).resolve().parents[1] / "trikern" / "assets" / "default", device="cpu",
                      dtype=torch.float32)


def embedded_prompts():
    from tokenizers import Tokenizer

    tok = Tokenizer.from_file(str(Path(__file__).resolve().parents[1] / "trikern" / "assets" / "default" /
                                  "tokenizer.json"))
    return [tok.encode(t).ids for t in ("import os\nimport sys\n\n\ndef main(argv=None):\n    parser = ",
                                        "class Stack:\n    def __init__(self):\n        self.items = []\n\n"
                                        "    def push(self, item):\n")]


@pytest.mark.parametrize("mode,B", [("spec-linear", 8), ("spec-quadratic", 4)])
def test_top1_tree_of_B_nodes_is_the_chain(embedded, monkeypatch, mode, B):
    """One child per node and N = B: the same tokens and the same stats as today's chain step (on
    the embedded model, whose drafts are accepted: multi-token steps occur)."""
    monkeypatch.setattr(TreeLinear, "TOP_K", 1)
    monkeypatch.setattr(TreeQuadratic, "TOP_K", 1)
    for prompt in embedded_prompts():
        chain, cs, _ = run(embedded, prompt, mode, max_new_tokens=40, block_size=B)
        tree, ts, _ = run(embedded, prompt, mode, max_new_tokens=40, block_size=B, tree_nodes=B)
        assert tree == chain
        assert ts.acceptance_lengths == cs.acceptance_lengths and max(cs.acceptance_lengths) > 1
        assert (ts.forwards, ts.prefill_forwards, ts.generated_tokens) == (cs.forwards, cs.prefill_forwards,
                                                                          cs.generated_tokens)


def test_trees_accept_more_than_the_chain(embedded):
    """Greedy on the embedded model: AR's output in every setting, and more tokens per forward with
    a tree (both modes)."""
    for mode, B, N in (("spec-linear", 8, 16), ("spec-quadratic", 8, 8)):
        chain_tpf = tree_tpf = 0.0
        for prompt in embedded_prompts():
            ar, _, _ = run(embedded, prompt, "ar", max_new_tokens=48)
            chain, cs, _ = run(embedded, prompt, mode, max_new_tokens=48, block_size=B)
            tree, ts, _ = run(embedded, prompt, mode, max_new_tokens=48, block_size=B, tree_nodes=N)
            assert chain == ar and tree == ar
            chain_tpf += cs.tokens_per_forward
            tree_tpf += ts.tokens_per_forward
        assert tree_tpf > chain_tpf, (mode, tree_tpf, chain_tpf)


def oracle_logp(full, g, V, B):
    """Draft log-probabilities that put AR's true next token at a random rank 0-3 of each depth's top
    four (mostly the first), or outside them: acceptance through a sibling, deep paths, and rejections at every depth."""
    levels = torch.tensor([-0.1, -1.0, -2.0, -3.0])

    def draft(n):
        truth = full[n + 1: n + B]
        logp = torch.full((B - 1, V), -30.0)
        for d in range(B - 1):
            t = int(truth[d]) if d < truth.shape[0] else -1
            decoys = [x for x in torch.randperm(V, generator=g).tolist() if x != t][:4]
            r = int(torch.multinomial(torch.tensor([0.65, 0.15, 0.07, 0.05, 0.08]), 1, generator=g))
            if r < 4 and t >= 0:
                decoys[r] = t
            logp[d, torch.tensor(decoys)] = levels
        return logp
    return draft


@pytest.mark.parametrize("mode", ["spec-linear", "spec-quadratic"])
def test_sibling_and_deep_acceptance_with_oracle_drafts(monkeypatch, mode):
    m = random_model(seed=7)
    prompt, total, B, V = [3, 1, 4, 1, 5], 60, 8, m.cfg.vocab_size
    ar, _, _ = run(m, prompt, "ar", max_new_tokens=total)
    full = torch.tensor(prompt + ar)
    g = torch.Generator().manual_seed(0)
    draft = oracle_logp(full, g, V, B)
    if mode == "spec-linear":
        monkeypatch.setattr(TreeLinear, "draft", lambda self, pending: draft(int(self.ctx.cache.length)))
    else:
        real = tree_quadratic.draft_logp

        def logp_after(ctx, logits):  # the next step's draft, seen from the committed length after this one
            return draft(int(ctx.cache.length)) if logits.shape[0] == B - 1 else real(ctx, logits)
        monkeypatch.setattr(tree_quadratic, "draft_logp", logp_after)
    out, stats, _ = run(m, prompt, mode, max_new_tokens=total - B, block_size=B, tree_nodes=24)
    assert out == ar[: total - B]
    assert len(stats.acceptance_lengths) >= 4 and max(stats.acceptance_lengths) >= 5


@pytest.mark.parametrize("mode", ["spec-linear", "spec-quadratic"])
@pytest.mark.parametrize("budget", [0, 3, 6])
def test_thinking_budget(models, mode, budget):
    prompt, end = [5, 6, 7], 42
    kw = dict(max_new_tokens=16, block_size=4, thinking_budget=budget, end_think_id=end)
    ar, _, _ = run(models[0], prompt, "ar", **kw)
    out, _, _ = run(models[0], prompt, mode, tree_nodes=7, **kw)
    assert out == ar and out[budget] == end


def test_auto_with_trees_equals_ar(models):
    """tree_nodes with mode auto: at the block sizes a tree declares, the tree replaces the chain."""
    from trikern.decode import candidates

    m = models[1]
    keys = candidates("auto", 8, m.cfg, tree_nodes=6)
    trees = {("tree-linear", 8), ("tree-quadratic", 4), ("tree-quadratic", 8)}
    assert {k for k in keys if k[0].startswith("tree")} == trees
    chains = candidates("auto", 8, m.cfg)
    replaced = {(k[0].replace("tree", "spec"), k[1]) for k in trees}
    assert sorted(k for k in keys if not k[0].startswith("tree")) == sorted(set(chains) - replaced)
    for prompt in prompts(2, m.cfg.vocab_size, seed=3):
        ar, _, _ = run(m, prompt, "ar", max_new_tokens=24)
        out, _, _ = run(m, prompt, "auto", max_new_tokens=24, block_size=8, tree_nodes=6)
        assert out == ar
        # every switch between chains and trees, both ways
        cyc = [("tree-quadratic", 8), ("tree-linear", 8), ("spec-quadratic", 4), ("tree-quadratic", 4),
               ("tree-quadratic", 8), ("spec-linear", 2), ("ar", 1)]
        out, _, _, _ = run_cycle(m, prompt, cyc, max_new_tokens=24, block_size=8, tree_nodes=6)
        assert out == ar


@pytest.mark.parametrize("value,match", [(0, "tree_nodes"), (300, "tree_nodes"), ("8", "tree_nodes"),
                                         (True, "tree_nodes")])
def test_bad_tree_nodes(models, value, match):
    with pytest.raises(ValueError, match=match):
        new_context(models[0], GenerationConfig(tree_nodes=value), 3, "spec-linear")


@pytest.mark.parametrize("mode", ["ar", "diffusion"])
def test_tree_nodes_needs_a_speculative_mode(models, mode):
    with pytest.raises(ValueError, match=f"draft trees are for mode 'spec-linear', 'spec-quadratic' or 'auto', "
                                         f"not mode='{mode}'"):
        new_context(models[0], GenerationConfig(tree_nodes=8), 3, mode)


def test_tree_modes_are_not_user_modes():
    from trikern.decode import MODES

    assert "tree-linear" not in MODES and "tree-quadratic" not in MODES


def test_large_budget_is_capped_by_the_block(models):
    """N above what a tree of B - 1 depths with K children holds runs the whole tree."""
    m = models[0]
    ar, _, _ = run(m, [2, 3], "ar", max_new_tokens=10)
    out, _, _ = run(m, [2, 3], "spec-quadratic", max_new_tokens=10, block_size=2, tree_nodes=200)
    assert out == ar


def test_auto_runs_each_blocks_own_tree(models):
    """Under auto a tree runs its strategy's N for the block (N = B), capped by tree_nodes; a fixed
    mode runs tree_nodes itself (capped by what B - 1 depths of 4 children hold)."""
    m = models[0]

    def nodes(mode, N, B=8):
        ctx = new_context(m, GenerationConfig(block_size=B, tree_nodes=N), 3, mode)
        return TreeLinear(ctx, B).nodes, TreeQuadratic(ctx, B).nodes(B - 1)
    assert nodes("auto", 64) == (8, 8) and nodes("auto", 5) == (5, 5)
    assert nodes("spec-linear", 64) == (64, 64) and nodes("spec-linear", 200, B=3) == (21, 21)
