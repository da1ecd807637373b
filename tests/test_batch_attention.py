"""Varlen attention (kernels.attention.Varlen): several sequences' chunks over their own cache
regions in one call. The CPU backend and the Triton path against the reference, and the reference
against the single-sequence op it is defined by."""
import pytest
import torch

from trikern.kernels.attention import (BIDIRECTIONAL, CAUSAL, QUADRATIC, TREE, Varlen, attention_ref,
                                       attention_varlen_ref, attention_varlen_triton)
from trikern.kernels.cpu.attention import attention_varlen as attention_varlen_cpu

TOL = {torch.float32: 2e-5, torch.bfloat16: 2e-2}


def case(chunks, lengths, pattern, Hq=6, Hkv=2, D=20, region=23, slots=4, order=None, dtype=torch.float32, seed=0):
    """q, k, v, caches, segs: segment b has chunks[b] tokens and lengths[b] committed entries in the
    region `order[b]`; the whole cache is random (scratch and other regions too), so reading any slot
    past a segment's committed length changes the output."""
    g = torch.Generator().manual_seed(seed)
    N = sum(chunks)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    q, k, v = r(N, Hq, D), r(N, Hkv, D), r(N, Hkv, D)
    kc, vc = r(Hkv, slots * region, D), r(Hkv, slots * region, D)
    order = list(range(len(chunks))) if order is None else order
    starts = [0]
    for T in chunks:
        starts.append(starts[-1] + T)
    segs = Varlen(starts, [s * region for s in order], lengths, region)
    return q, k, v, kc, vc, segs


def put_chunks(k, v, kc, vc, segs):
    """Write each chunk's K/V into its region after the committed entries (a pass that writes the
    cache: `chunk_in_cache`)."""
    for b in range(segs.count):
        a, e, base, n = segs.segment(b)
        kc[:, base + n:base + n + e - a] = k[a:e].transpose(0, 1)
        vc[:, base + n:base + n + e - a] = v[a:e].transpose(0, 1)


SHAPES = [
    ([1], [0]),  # one token, empty cache
    ([1, 1, 1], [5, 0, 17]),  # a decode step of three sequences
    ([7, 1, 0, 3], [0, 9, 4, 20]),  # a prefill chunk, decode tokens, an empty segment
    ([0], [3]),  # nothing to attend
    ([9, 2], [11, 1]),
]


@pytest.mark.parametrize("in_cache", [False, True])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("pattern", [CAUSAL, BIDIRECTIONAL])
@pytest.mark.parametrize("chunks,lengths", SHAPES)
def test_cpu_matches_reference(chunks, lengths, pattern, dtype, in_cache):
    q, k, v, kc, vc, segs = case(chunks, lengths, pattern, dtype=dtype, order=list(reversed(range(len(chunks)))))
    if in_cache:
        put_chunks(k, v, kc, vc, segs)
    want = attention_varlen_ref(q, k, v, kc, vc, segs, pattern)
    got = attention_varlen_cpu(q, k, v, kc, vc, segs, pattern, chunk_in_cache=in_cache)
    assert got.shape == want.shape == q.shape and got.dtype == dtype
    torch.testing.assert_close(got.float(), want.float(), atol=TOL[dtype], rtol=TOL[dtype])


@pytest.mark.parametrize("in_cache", [False, True])
@pytest.mark.parametrize("chunks,lengths", [([6, 3, 0], [0, 7, 2]), ([3], [19])])
def test_cpu_quadratic_matches_reference(chunks, lengths, in_cache):
    q, k, v, kc, vc, segs = case(chunks, lengths, QUADRATIC)
    if in_cache:
        put_chunks(k, v, kc, vc, segs)
    want = attention_varlen_ref(q, k, v, kc, vc, segs, QUADRATIC, 3)
    got = attention_varlen_cpu(q, k, v, kc, vc, segs, QUADRATIC, 3, chunk_in_cache=in_cache)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("pattern", [CAUSAL, BIDIRECTIONAL])
@pytest.mark.parametrize("chunks,lengths", SHAPES[1:3])
def test_triton_matches_reference(chunks, lengths, pattern):
    q, k, v, kc, vc, segs = case(chunks, lengths, pattern, Hq=4, Hkv=2, D=16, region=25)
    want = attention_varlen_ref(q, k, v, kc, vc, segs, pattern)
    got = attention_varlen_triton(q, k, v, kc, vc, segs, pattern)
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_reference_is_each_segment_over_its_own_cache():
    """Segment b equals the single-sequence op on a cache that holds only its region, and reads
    nothing of the other regions."""
    chunks, lengths = [4, 1, 2], [3, 12, 0]
    q, k, v, kc, vc, segs = case(chunks, lengths, CAUSAL, order=[2, 0, 1])
    out = attention_varlen_ref(q, k, v, kc, vc, segs, CAUSAL)
    for b in range(3):
        a, e, base, n = segs.segment(b)
        own_k, own_v = kc[:, base:base + n].clone(), vc[:, base:base + n].clone()
        want = attention_ref(q[a:e], k[a:e], v[a:e], own_k, own_v, n, CAUSAL)
        torch.testing.assert_close(out[a:e], want)
    # Scribble over everything but the committed entries: nothing changes.
    kc2, vc2 = torch.randn_like(kc), torch.randn_like(vc)
    for b in range(3):
        _, _, base, n = segs.segment(b)
        kc2[:, base:base + n], vc2[:, base:base + n] = kc[:, base:base + n], vc[:, base:base + n]
    for fn in (attention_varlen_ref, attention_varlen_cpu):
        torch.testing.assert_close(fn(q, k, v, kc2, vc2, segs, CAUSAL), out, atol=2e-5, rtol=2e-5)
    # With the chunks in their regions, the CPU backend reads them there: scribbling on the chunk's
    # own k / v arguments then changes nothing either.
    put_chunks(k, v, kc2, vc2, segs)
    got = attention_varlen_cpu(q, torch.randn_like(k), torch.randn_like(v), kc2, vc2, segs, CAUSAL, chunk_in_cache=True)
    torch.testing.assert_close(got, out, atol=2e-5, rtol=2e-5)


def test_bad_layouts_name_the_parameter():
    q, k, v, kc, vc, segs = case([2, 1], [0, 3], CAUSAL)
    with pytest.raises(ValueError, match="starts"):
        Varlen([0, 2], [0, 23], [0, 3], 23)
    with pytest.raises(ValueError, match="region holds 23"):
        Varlen([0, 2, 3], [0, 23], [0, 23], 23)
    with pytest.raises(ValueError, match="outside"):
        attention_varlen_ref(q, k, v, kc, vc, Varlen([0, 2, 3], [0, 90], [0, 3], 23), CAUSAL)
    with pytest.raises(ValueError, match="q has 3 rows"):
        attention_varlen_cpu(q, k, v, kc, vc, Varlen([0, 2, 4], [0, 23], [0, 3], 23), CAUSAL)
    with pytest.raises(ValueError, match="pattern"):
        attention_varlen_cpu(q, k, v, kc, vc, segs, TREE)
    with pytest.raises(ValueError, match="sub_block=2"):
        attention_varlen_ref(q, k, v, kc, vc, segs, QUADRATIC, 2)


@pytest.mark.parametrize("in_cache", [False, True])
def test_cpu_groups_long_chunks_and_big_batches_apart(monkeypatch, in_cache):
    """A 70-token prefill chunk among one-token steps runs alone; a batch whose padded scores would
    outgrow CPU_SCORES is split into groups. Same results either way, rows in place."""
    from trikern.kernels.cpu import attention as cpu

    chunks, lengths = [1, 70, 1, 2, 0, 1], [30, 5, 0, 11, 3, 50]
    q, k, v, kc, vc, segs = case(chunks, lengths, CAUSAL, region=130, slots=6, order=[3, 0, 5, 1, 2, 4])
    if in_cache:
        put_chunks(k, v, kc, vc, segs)
    want = attention_varlen_ref(q, k, v, kc, vc, segs, CAUSAL)
    got = attention_varlen_cpu(q, k, v, kc, vc, segs, CAUSAL, chunk_in_cache=in_cache)
    assert sorted(cpu._plan(segs, 6, in_cache)) == [(0, 2, 3, 5), (1,)]
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    monkeypatch.setattr(cpu, "CPU_SCORES", 6 * 2 * 60)  # two one-token rows over ~60 keys per group
    segs2 = Varlen(segs.starts, segs.bases, segs.lengths, segs.region)
    got = attention_varlen_cpu(q, k, v, kc, vc, segs2, CAUSAL, chunk_in_cache=in_cache)
    assert len(cpu._plan(segs2, 6, in_cache)) >= 3
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
