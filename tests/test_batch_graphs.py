"""The batched passes CUDA graphs replay (trikern/batch/graphs.py), checked on a CPU: the static path
a graph captures -- D sequences padded to a bucket, layout, positions and K/V slots computed on the
device from the cache's lengths -- gives every sequence its solo tokens, writes no region but its
own, and matches the eager pass's logits. (Capture and replay themselves need a GPU: `trikern
selfcheck` runs them there.)"""
import os

import pytest
import torch
from decode_helpers import prompts, run
from util import random_model, tiny_config

from trikern.batch import BatchDecoder, SlotCache, forward_batch
from trikern.batch.forward import layout
from trikern.batch.graphs import BatchGraphs, buckets, device_pass
from trikern.kernels import BIDIRECTIONAL, CAUSAL


def static_graphs(dec):
    """Route dec's passes through BatchGraphs without capture (what a replay computes), on a CPU: a
    cache with the pad slots graphs need, then the runner."""
    c = dec.cache
    dec.cache = SlotCache.for_model(dec.cfg, c.seqs, c.capacity, dec.dtype, dec.device, scratch=c.region - c.capacity,
                                    pad=BatchGraphs.pad_slots(dec.max_batch, c.region - c.capacity))
    dec.graphs = BatchGraphs(dec, capture=False)
    return dec


def solo(model, prompt, mode, B, **kw):
    return run(model, prompt, mode, **({} if mode == "ar" else {"block_size": B}), **kw)[0]


def test_buckets():
    assert buckets(1) == [1]
    assert buckets(3) == [1, 2, 3]
    assert buckets(4) == [1, 2, 4]
    assert buckets(8) == [1, 2, 4, 8]
    assert buckets(20) == [1, 2, 4, 8, 16, 20]


@pytest.mark.parametrize("backend", ["torch", "cpu"])
@pytest.mark.parametrize("mode,B", [("ar", None), ("spec-linear", 4), ("diffusion", 4), ("auto", 4),
                                    ("spec-quadratic", 2), ("spec-quadratic", 3)])
def test_static_path_equals_solo_as_the_batch_changes(mode, B, backend):
    """Sequences join (prefill steps run eagerly, decode-only steps through the graphs' path) and
    leave, so the bucket moves between 1, 2 and 3 (padded to 4) with sequences in any region."""
    m = random_model(seed=3, backend=backend)
    ps = prompts(5, 160, seed=1, lengths=(7, 1, 12, 3, 5))
    budgets = [14, 3, 9, 40, 11]  # the fourth finishes alone
    dec = static_graphs(BatchDecoder(m, max_batch=3, mode=mode, block_size=B, prefill_chunk=8))
    joins, seqs, step = [0, 0, 2, 3, 9], [None] * 5, 0
    while step <= max(joins) or dec.busy:
        for i, j in enumerate(joins):
            if j == step:
                seqs[i] = dec.add(ps[i], max_new_tokens=budgets[i])
        dec.step()
        step += 1
    for p, n, s in zip(ps, budgets, seqs):
        assert s.tokens == solo(m, p, mode, B, max_new_tokens=n), (p, n)
    assert {key[-1] for key in dec.graphs.static} >= {1, 2, 3}


def test_sampled_static_path_keeps_the_seeded_text():
    m = random_model(seed=5)
    ps = prompts(3, 160, seed=2, lengths=(4, 9, 2))
    for mode, B in (("ar", None), ("spec-linear", 4), ("spec-quadratic", 3)):
        dec = static_graphs(BatchDecoder(m, max_batch=4, mode=mode, block_size=B))
        kw = dict(max_new_tokens=10, temperature=0.9, top_p=0.9)
        seqs = [dec.add(p, seed=10 + i, **kw) for i, p in enumerate(ps)]
        while dec.busy:
            dec.step()
        for i, (p, s) in enumerate(zip(ps, seqs)):
            assert s.tokens == solo(m, p, mode, B, seed=10 + i, **kw)


def needs_triton():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("backend='triton' on CPU needs TRITON_INTERPRET=1")


def test_static_path_on_the_triton_kernels_equals_solo():
    """The Triton varlen kernel reading the device layout (the graphs' path on a GPU), every graphed
    pass kind, three sequences in a bucket of four (one padding row set)."""
    needs_triton()
    m = random_model(tiny_config(num_hidden_layers=1, max_position_embeddings=64), seed=6, backend="triton")
    ps = prompts(3, 160, seed=7, lengths=(2, 5, 3))
    for mode, B in (("ar", None), ("spec-linear", 2), ("spec-quadratic", 2), ("diffusion", 2)):
        dec = static_graphs(BatchDecoder(m, max_batch=4, mode=mode, block_size=B, context=32))
        seqs = [dec.add(p, max_new_tokens=5) for p in ps]
        while dec.busy:
            dec.step()
        assert [s.tokens for s in seqs] == [solo(m, p, mode, B, max_new_tokens=5) for p in ps], mode
        assert 4 in {key[-1] for key in dec.graphs.static}, mode


@pytest.mark.parametrize("backend", ["torch", "triton"])
def test_device_pass_equals_the_eager_pass_and_writes_only_its_regions(backend):
    """D = 3 sequences in regions 2, 0, 3 padded to a bucket of 4: the logits and K/V of the eager
    varlen pass, the other region untouched, the padding's K/V in the pad slots only."""
    if backend == "triton":
        needs_triton()
    m = random_model(tiny_config(num_hidden_layers=1, max_position_embeddings=64), seed=7, backend=backend)
    g = torch.Generator().manual_seed(0)
    W, regions, lens = 3, [2, 0, 3], {0: 5, 1: 9, 2: 0, 3: 13}
    a = SlotCache.for_model(m.cfg, 4, 24, torch.float32, "cpu", scratch=W, pad=BatchGraphs.pad_slots(4, W))
    for s, n in lens.items():
        if n:
            ids = torch.randint(0, 160, (n,), generator=g)
            m(ids, torch.arange(n), a.view(s), CAUSAL, write_cache=True)
            a.view(s).commit(n)
    b = SlotCache.for_model(m.cfg, 4, 24, torch.float32, "cpu", scratch=W, pad=BatchGraphs.pad_slots(4, W))
    b.k.copy_(a.k), b.v.copy_(a.v), b.lengths.copy_(a.lengths)
    toks = torch.randint(0, 160, (4 * W,), generator=g)
    meta, offsets = torch.tensor(regions + [0, 3]), torch.arange(W)
    for pattern, write, lo in ((CAUSAL, True, 0), (BIDIRECTIONAL, False, 1)):
        got = device_pass(m, a, toks, meta, offsets, (lo, W), pattern, 0, write, False)[:3 * (W - lo)]
        segs = layout(b, [(s, lens[s], W) for s in regions])
        rows = torch.tensor([i * W + j for i in range(3) for j in range(lo, W)])
        want = forward_batch(m, toks[:3 * W], b, segs, pattern, write_cache=write, logits_index=rows)
        tol = 1e-4 if backend == "torch" else 2e-3
        torch.testing.assert_close(got, want, atol=tol, rtol=tol)
    for s in regions:
        sl = slice(a.base(s), a.base(s) + lens[s] + W)
        torch.testing.assert_close(a.k[:, :, sl], b.k[:, :, sl], atol=1e-5, rtol=1e-5)
    untouched = slice(a.base(1), a.base(2))
    assert torch.equal(a.k[:, :, untouched], b.k[:, :, untouched])
    pad = slice(a.pad_base + 3 * W, a.pad_base + 4 * W)
    assert a.k[:, :, pad].abs().sum() > 0 and not b.k[:, :, pad].abs().sum()  # the padded sequence's rows
    assert torch.equal(a.lengths, b.lengths)  # a pass commits nothing


def test_cuda_graphs_setting_is_checked():
    m = random_model(seed=1)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graphs=True needs the model on a CUDA device"):
            BatchDecoder(m, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs='yes'"):
        BatchDecoder(m, cuda_graphs="yes")
    dec = BatchDecoder(m, cuda_graphs=False)
    assert dec.graphs is None and dec.cache.pad_base == dec.cache.k.shape[2]
    with pytest.raises(ValueError, match="cuda_graphs=True: a batched decoder runs one setting"):
        dec.add([1, 2], cuda_graphs=True)
