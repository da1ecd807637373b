"""`mode="auto"` over a batch (trikern/batch/auto.py): each step runs the candidate of the highest
expected aggregate tokens per second for the sequences decoding now, with step costs kept per batch
size; every candidate is lossless, so each sequence's output is still its solo AR run's."""
import pytest
import torch
from test_batch_decode import solo, staggered

from trikern.batch import BatchDecoder
from trikern.decode.auto.costs import CostModel


@pytest.fixture(scope="module")
def embedded():
    import trikern
    return trikern.load(dtype=torch.float32)


def test_auto_batch_equals_solo_ar_while_it_switches(embedded, monkeypatch, tmp_path):
    """Greedy fp32, sequences joining and leaving: every sequence equals its solo AR run, and the
    batch ran more than one candidate (measuring them on the fly: no profile)."""
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    m, tok = embedded.model, embedded.tokenizer
    texts = ["The quick brown fox", "Once upon a time", "1, 2, 3, 4,", "Hello", "def add(a, b):"]
    items = [(tok.encode(t), dict(max_new_tokens=n)) for t, n in zip(texts, (40, 9, 30, 24, 3))]
    dec = BatchDecoder(m, max_batch=3, mode="auto", block_size=4, prefill_chunk=5)
    seqs, sizes = staggered(dec, items, joins=[0, 0, 2, 5, 5])
    for (p, kw), s in zip(items, seqs):
        assert s.tokens == solo(m, p, "ar", None, **kw), (p, kw)
    kinds = dec.step_kind.chosen
    assert len({k for _, k in kinds}) >= 3, kinds  # measured several candidates
    assert len({n for n, _ in kinds}) >= 2, kinds  # at several batch sizes
    assert any(k[0] == "spec-quadratic" for _, k in kinds), kinds  # entered quadratic (restart) mid-batch


def test_the_choice_follows_the_batch_size(embedded, monkeypatch):
    """Costs where a wide speculative step wins alone and AR wins for four chains: auto runs the
    speculative step at batch size 1 and AR at batch size 4 (acceptance as measured)."""
    monkeypatch.setenv("TRIKERN_DECODE_PROFILE", "0")
    dec = BatchDecoder(embedded.model, max_batch=4, mode="auto", block_size=4)
    auto = dec.step_kind
    one = {k: (1e-3 if k[0] == "ar" else 2e-3) for k in auto.keys}
    four = {k: (1.2e-3 if k[0] == "ar" else 8e-3) for k in auto.keys}
    auto.costs = {1: CostModel(auto.keys, one), 4: CostModel(auto.keys, four)}
    for cm in auto.costs.values():
        cm.ratios = {k: 1.0 for k in auto.keys}  # confirmed: nothing left to check
    seqs = [dec.add([1, 2, 3], max_new_tokens=5) for _ in range(4)]
    for s in seqs:
        for a in auto.acceptance(s).values():
            for _ in range(20):
                a.step(1.0, 3, 3)  # every draft accepted lately: a B=4 step yields ~4 tokens
    assert auto.choose(seqs[:1], [])[0] != "ar"
    auto.current = None
    assert auto.choose(seqs, []) == ("ar", 1)
    # A step with prefill pieces never runs QUADRATIC (it cannot carry a causal chunk).
    assert all(auto.choose(seqs[:1], [(seqs[1], 3)])[0] != "spec-quadratic" for _ in range(20))
