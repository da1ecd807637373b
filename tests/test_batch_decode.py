"""Batched decoding (trikern/batch): every sequence's output equals its solo run, however the batch
changes around it -- different prompt lengths, sequences joining mid-generation, leaving at EOS or
their budget, prompts fed in chunks over several steps, a queue behind a full batch."""
import time
from collections import Counter

import pytest
import torch
from decode_helpers import prompts, run
from util import random_model, tiny_config

from trikern.batch import BatchDecoder, SlotCache, forward_batch, generate_batch
from trikern.batch.forward import layout
from trikern.kernels import CAUSAL

MODES = [("ar", None), ("spec-linear", 1), ("spec-linear", 4), ("spec-linear", 8), ("spec-quadratic", 1),
         ("spec-quadratic", 4), ("diffusion", 1), ("diffusion", 4)]


def solo(model, prompt, mode, block_size, **kw):
    if mode != "ar":
        kw["block_size"] = block_size
    return run(model, prompt, mode, **kw)[0]


def staggered(dec, items, joins):
    """Add items[i] = (prompt, kwargs) before step joins[i]; step until all are done. Returns the
    sequences and the number of decoding sequences of every step."""
    seqs, sizes, step = [None] * len(items), [], 0
    while step <= max(joins) or dec.busy:
        for i, j in enumerate(joins):
            if j == step:
                seqs[i] = dec.add(items[i][0], **items[i][1])
        sizes.append(sum(s.decoding for s in dec.active))
        dec.step()
        step += 1
    return seqs, sizes


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("mode,B", MODES)
def test_joining_and_leaving_equals_solo(mode, B, backend):
    m = random_model(seed=3, backend=backend)
    ps = prompts(6, 160, seed=B or 0, lengths=(7, 1, 20, 3, 12, 5))
    budgets = [14, 3, 9, 20, 1, 11]  # leave at different steps (1: right after the prefill)
    items = [(p, dict(max_new_tokens=n)) for p, n in zip(ps, budgets)]
    dec = BatchDecoder(m, max_batch=3, mode=mode, block_size=B, prefill_chunk=8)
    seqs, sizes = staggered(dec, items, joins=[0, 0, 2, 3, 3, 9])
    for (p, kw), s in zip(items, seqs):
        assert s.tokens == solo(m, p, mode, B, **kw), (p, kw)
        assert s.done and s.slot is None
    assert max(sizes) >= 2 and not dec.active and sorted(dec.cache.free) == [0, 1, 2]


@pytest.fixture(scope="module")
def embedded():
    """The embedded default checkpoint in fp32: trained, so its drafts are often accepted in part
    (a random model's almost never are, which would leave multi-token commits untested)."""
    import trikern
    return trikern.load(dtype=torch.float32)


@pytest.mark.parametrize("mode,B", [("ar", None), ("spec-linear", 4), ("spec-linear", 8), ("spec-quadratic", 2),
                                    ("spec-quadratic", 4), ("diffusion", 4), ("diffusion", 8)])
def test_trained_model_batched_equals_solo(embedded, mode, B):
    m, tok = embedded.model, embedded.tokenizer
    texts = ["The quick brown fox", "Once upon a time", "1, 2, 3, 4,", "Hello", "The capital of France is",
             "def add(a, b):"]
    items = [(tok.encode(t), dict(max_new_tokens=n)) for t, n in zip(texts, (20, 7, 24, 16, 2, 12))]
    dec = BatchDecoder(m, max_batch=4, mode=mode, block_size=B, prefill_chunk=5)
    seqs, sizes = staggered(dec, items, joins=[0, 1, 1, 2, 6, 6])
    accepted = sum((s.stats.acceptance_lengths for s in seqs), Counter())
    for (p, kw), s in zip(items, seqs):
        assert s.tokens == solo(m, p, mode, B, **kw), (p, kw)
    assert max(sizes) >= 2
    if mode.startswith("spec"):  # partial acceptance and long accepts both happened, batched
        assert min(accepted) < B and max(accepted) >= min(B, 3), accepted


@pytest.mark.parametrize("mode,B", [("ar", None), ("spec-linear", 4), ("spec-quadratic", 4), ("diffusion", 4)])
def test_eos_leaves_early_and_equals_solo(mode, B):
    m = random_model(seed=5, backend="cpu")
    ps = prompts(4, 160, seed=1)
    full = [solo(m, p, mode, B, max_new_tokens=16) for p in ps]
    eos = full[0][5]  # the first sequence meets it mid-generation; the others maybe
    outs = generate_batch(m, ps, mode=mode, block_size=B, max_new_tokens=16, stop_token_ids=(eos,))
    for p, out in zip(ps, outs):
        assert out == solo(m, p, mode, B, max_new_tokens=16, stop_token_ids=(eos,))
    assert outs[0] == full[0][:6]


@pytest.mark.parametrize("mode,B", [("ar", None), ("spec-linear", 4), ("spec-quadratic", 3), ("diffusion", 4)])
def test_sampled_seed_gives_the_solo_text(mode, B):
    m = random_model(seed=7, backend="cpu")
    ps = prompts(3, 160, seed=2)
    kws = [dict(max_new_tokens=12, temperature=1.0, seed=11), dict(max_new_tokens=9, temperature=0.8, top_k=20, seed=3),
           dict(max_new_tokens=12)]  # a greedy one in the same batch
    dec = BatchDecoder(m, max_batch=3, mode=mode, block_size=B)
    seqs = [dec.add(p, **kw) for p, kw in zip(ps, kws)]
    list(dec.run())
    for p, kw, s in zip(ps, kws, seqs):
        assert s.tokens == solo(m, p, mode, B, **kw)


def test_long_prompt_is_fed_in_chunks_while_others_decode():
    """A 40-token prompt with prefill_chunk=6 takes 7 steps; the sequence already decoding emits a
    token at every one of them."""
    m = random_model(seed=8, backend="cpu")
    short, long = prompts(2, 160, seed=4, lengths=(3, 40))
    dec = BatchDecoder(m, max_batch=2, prefill_chunk=6)
    a = dec.add(short, max_new_tokens=30)
    dec.step()
    b = dec.add(long, max_new_tokens=5)
    emitted = []
    while not b.tokens:
        emitted.append(len(dec.step().get(a, [])))
    assert b.stats.prefill_forwards == 7 and emitted == [1] * 7
    list(dec.run())
    assert a.tokens == solo(m, short, "ar", None, max_new_tokens=30)
    assert b.tokens == solo(m, long, "ar", None, max_new_tokens=5)


def test_step_seconds_are_kept_by_batch_size():
    """The decoder's wall seconds per step: steps with prefill pieces apart, the others by how many
    sequences they decoded (a benchmark's ragged end: users leaving one by one), adding up to the
    run's time."""
    m = random_model(seed=8, backend="cpu")
    ps = prompts(3, 160, seed=6)
    dec = BatchDecoder(m, max_batch=3)
    for p, new in zip(ps, (3, 6, 9)):
        dec.add(p, max_new_tokens=new)
    t0 = time.perf_counter()
    list(dec.run())
    wall = time.perf_counter() - t0
    assert set(dec.decode_seconds) == {1, 2, 3} and dec.prefill_seconds > 0
    counted = dec.prefill_seconds + sum(dec.decode_seconds.values())
    assert 0.5 * wall < counted <= wall, (counted, wall)
    # AR: the prefill step gives each its first token, then one a step: budgets 3, 6 and 9
    assert (dec.batch_sizes[3], dec.batch_sizes[2], dec.batch_sizes[1]) == (2, 3, 3)


def test_queue_behind_a_full_batch_and_cancel():
    m = random_model(seed=9, backend="cpu")
    ps = prompts(4, 160, seed=5)
    dec = BatchDecoder(m, max_batch=2)
    seqs = [dec.add(p, max_new_tokens=10) for p in ps]
    dec.step()
    assert [s.slot is not None for s in seqs] == [True, True, False, False]
    dec.cancel(seqs[0])  # a client went away: its region goes to the next in the queue
    dec.step()
    assert seqs[0].done and seqs[0].slot is None and seqs[2].slot is not None and seqs[3].slot is None
    list(dec.run())
    for p, s in zip(ps[1:], seqs[1:]):
        assert s.tokens == solo(m, p, "ar", None, max_new_tokens=10)
    assert len(seqs[0].tokens) == 1


@pytest.mark.parametrize("mode,B", [("ar", None), ("spec-linear", 4), ("spec-quadratic", 4)])
def test_thinking_budget_forces_the_token_as_solo(embedded, mode, B):
    m, tok = embedded.model, embedded.tokenizer
    ps = [tok.encode(t) for t in ("The quick brown fox", "1, 2, 3, 4,")]
    end = tok.encode(" the")[-1]
    kw = dict(max_new_tokens=14, thinking_budget=5, end_think_id=end)
    outs = generate_batch(m, ps, mode=mode, block_size=B, **kw)
    for p, out in zip(ps, outs):
        assert out == solo(m, p, mode, B, **kw) and out[5] == end


def test_triton_backend_equals_solo():
    """The same decoding on the Triton kernels (TRITON_INTERPRET=1 on a CPU: tests/conftest.py)."""
    import os
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("backend='triton' on CPU needs TRITON_INTERPRET=1")
    m = random_model(tiny_config(num_hidden_layers=1, max_position_embeddings=64), seed=6, backend="triton")
    ps = prompts(2, 160, seed=7, lengths=(2, 5))
    for mode, B in (("ar", None), ("spec-linear", 2), ("spec-quadratic", 2), ("diffusion", 2)):
        outs = generate_batch(m, ps, mode=mode, block_size=B, max_new_tokens=4)
        assert outs == [solo(m, p, mode, B, max_new_tokens=4) for p in ps]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
def test_forward_batch_equals_each_sequence_on_its_region(backend):
    """One varlen pass == each chunk through model.forward on its region (a SlotCache view), and it
    writes the same K/V there."""
    m = random_model(seed=11, backend=backend)
    cfg = m.cfg
    g = torch.Generator().manual_seed(0)
    a, b = SlotCache.for_model(cfg, 3, 40, torch.float32, "cpu", scratch=8), None
    for s, n in ((0, 5), (2, 17)):  # committed history in two regions
        ids = torch.randint(0, 160, (n,), generator=g)
        m(ids, torch.arange(n), a.view(s), CAUSAL, write_cache=True)
        a.view(s).commit(n)
    b = SlotCache.for_model(cfg, 3, 40, torch.float32, "cpu", scratch=8)
    b.k.copy_(a.k), b.v.copy_(a.v), b.lengths.copy_(a.lengths)
    chunks = [(2, 17, 1), (1, 0, 6), (0, 5, 3)]
    toks = torch.randint(0, 160, (10,), generator=g)
    got = forward_batch(m, toks, a, layout(a, chunks), CAUSAL, write_cache=True)
    start = 0
    for s, n, T in chunks:
        view = b.view(s)
        want = m(toks[start:start + T], torch.arange(n, n + T), view, CAUSAL, write_cache=True)
        torch.testing.assert_close(got[start:start + T], want, atol=1e-4, rtol=1e-4)
        start += T
    for s, n, T in chunks:
        sl = slice(b.base(s), b.base(s) + n + T)
        torch.testing.assert_close(a.k[:, :, sl], b.k[:, :, sl], atol=1e-5, rtol=1e-5)


def test_slot_cache_regions():
    c = SlotCache(2, 1, 4, seqs=2, capacity=5, dtype=torch.float32, device="cpu", scratch=2)
    s0, s1 = c.acquire(), c.acquire()
    with pytest.raises(RuntimeError, match="all 2 sequence regions"):
        c.acquire()
    v = c.view(s1)
    assert v.slots == 7 and v.capacity == 5 and v.k.shape == (2, 1, 7, 4)
    v.write(1, torch.ones(2, 1, 4), torch.ones(2, 1, 4), v.scratch_slots(2))
    v.commit(2)
    assert c.lengths.tolist() == [0, 2] and c.k[1, 0, 7:9].eq(1).all() and c.k[:, :, :7].eq(0).all()
    c.release(s1)
    with pytest.raises(ValueError, match="region 1 is not held"):
        c.release(s1)
    assert c.acquire() == 1 and c.lengths.tolist() == [0, 0]
    with pytest.raises(ValueError, match="seqs=0"):
        SlotCache(2, 1, 4, seqs=0, capacity=5, dtype=torch.float32, device="cpu")


def test_bad_settings_name_the_parameter():
    m = random_model(seed=1)
    with pytest.raises(ValueError, match="mode='beam'"):
        BatchDecoder(m, mode="beam")
    with pytest.raises(ValueError, match="max_batch=0"):
        BatchDecoder(m, max_batch=0)
    with pytest.raises(ValueError, match="context=1000"):
        BatchDecoder(m, context=1000)
    dec = BatchDecoder(m, mode="spec-linear", block_size=4, context=32)
    with pytest.raises(ValueError, match="block_size=8"):
        dec.add([1, 2], block_size=8)
    with pytest.raises(ValueError, match="tree_nodes=3"):
        dec.add([1, 2], tree_nodes=3)
    with pytest.raises(ValueError, match=r"prompt_ids\[1\]=999"):
        dec.add([1, 999])
    with pytest.raises(ValueError, match="prompt has 32 tokens"):
        dec.add(list(range(32)))
    with pytest.raises(ValueError, match="temperature"):
        dec.add([1], temperature=-1.0)
    # a budget past the context is cut to it, as solo
    s = dec.add([1] * 30, max_new_tokens=100)
    list(dec.run())
    assert len(s.tokens) == 2


def test_generate_batch_sizes_its_regions_for_the_prompts(monkeypatch):
    """Regions for the longest prompt plus the budget, not the model's context (NLD's 262k tokens
    times max_batch regions would not fit a GPU); the outputs are the same."""
    import trikern.batch.driver as driver
    m = random_model(tiny_config(max_position_embeddings=4096), seed=2)
    ps = prompts(3, 160, seed=4, lengths=(5, 9, 2))
    regions, made = [], driver.BatchDecoder.__init__

    def spy(self, *a, **kw):
        made(self, *a, **kw)
        regions.append(self.cache.region)
    monkeypatch.setattr(driver.BatchDecoder, "__init__", spy)
    outs = generate_batch(m, ps, mode="spec-linear", block_size=4, max_new_tokens=12)
    assert regions and regions[0] < 64, regions
    assert outs == [solo(m, p, "spec-linear", 4, max_new_tokens=12) for p in ps]
