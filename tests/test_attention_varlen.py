"""The single-launch varlen Triton attention (`attention_varlen_triton`, `_attn_fwd` in VARLEN mode)
against the reference `attention_varlen_ref`, under the interpreter.

Every cache slot that is not some segment's committed entry holds NaN, so a program that reads
past its segment's length, into another segment's region or the scratch between regions shows up
as NaN. Segment mixes: empty segments, one-row decode segments next to prefill-sized chunks,
committed lengths 0, 1 and a key tile +-1, regions in shuffled order. Tolerance as in
test_attention: fp32 tight; fp16 / bf16 within 2x torch's own low-precision SDPA error (plus a
floor), bf16 also within one bf16 ulp of the fp32 reference (it runs on the fp32 upcast path here).
"""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from trikern.kernels import autotune, launches
from trikern.kernels.attention import (BIDIRECTIONAL, CAUSAL, QUADRATIC, TREE, Varlen, VarlenDevice, attention_ref,
                                       attention_varlen_ref, attention_varlen_triton, full_mask)

FP32_TOL = dict(atol=1e-5, rtol=1e-5)
BF16_TOL = dict(atol=1e-3, rtol=2.0 ** -7)
LOWP_FLOOR = 1e-3


def cfg(block_m=64, block_n=64, split=1):
    return dict(BLOCK_M=block_m, BLOCK_N=block_n, num_warps=4, num_stages=1, SPLIT=split)


def make(chunks, lengths, G=1, Hkv=2, D=16, dtype=torch.float32, seed=0):
    """(inputs with NaN outside every committed entry, clean fp32 copies, segs). Regions are laid
    out in reverse order with one spare region at slot 0, so bases differ from the segment order."""
    B = len(chunks)
    region = max(n + T for n, T in zip(lengths, chunks)) + 3
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g).to(dtype)  # noqa: E731
    N = sum(chunks)
    q, k, v = r(N, Hkv * G, D), r(N, Hkv, D), r(N, Hkv, D)
    kc, vc = r(Hkv, (B + 1) * region, D), r(Hkv, (B + 1) * region, D)
    starts = [0]
    for T in chunks:
        starts.append(starts[-1] + T)
    segs = Varlen(starts, [(B - b) * region for b in range(B)], lengths, region)
    clean = tuple(x.float().clone() for x in (q, k, v, kc, vc))
    committed = torch.zeros(kc.shape[1], dtype=torch.bool)
    for b in range(B):
        _, _, base, n = segs.segment(b)
        committed[base:base + n] = True
    kc[:, ~committed], vc[:, ~committed] = float("nan"), float("nan")
    return (q, k, v, kc, vc), clean, segs


def lowp_sdpa(inputs, segs, pattern, sub_block):
    """torch's own SDPA in the inputs' dtype per segment: the low-precision baseline."""
    q, k, v, kc, vc = inputs
    outs = []
    for b in range(segs.count):
        a, e, base, n = segs.segment(b)
        if e == a:
            continue
        mask = full_mask(pattern, e - a, n, n, sub_block)
        keys = torch.cat([kc[:, base:base + n], k[a:e].transpose(0, 1)], 1)
        vals = torch.cat([vc[:, base:base + n], v[a:e].transpose(0, 1)], 1)
        out = F.scaled_dot_product_attention(q[a:e].transpose(0, 1), keys, vals, attn_mask=mask, enable_gqa=True)
        outs.append(out.transpose(0, 1))
    return torch.cat(outs) if outs else q.new_empty(0, *q.shape[1:])


def check(chunks, lengths, pattern, config, G=1, D=16, dtype=torch.float32, sub_block=0, seed=0):
    inputs, clean, segs = make(chunks, lengths, G=G, D=D, dtype=dtype, seed=seed)
    got = attention_varlen_triton(*inputs, segs, pattern, sub_block, None, config=config)
    want = attention_varlen_ref(*clean, segs, pattern, sub_block)
    assert got.shape == inputs[0].shape and got.dtype == dtype
    assert not got.isnan().any(), "NaN leaked from a slot that is no segment's committed entry"
    if dtype == torch.float32:
        torch.testing.assert_close(got, want, **FP32_TOL)
        return
    q, k, v, kc, vc = inputs
    base = lowp_sdpa((q, k, v, torch.nan_to_num(kc), torch.nan_to_num(vc)), segs, pattern, sub_block)
    err = (got.float() - want).abs().max().item()
    bound = 2 * (base.float() - want).abs().max().item() + LOWP_FLOOR
    assert err <= bound, f"{dtype} error {err:.2e} > {bound:.2e} (2x torch's own SDPA + floor)"
    if dtype == torch.bfloat16:
        torch.testing.assert_close(got.float(), want, **BF16_TOL)


# (chunks, committed lengths, pattern, GQA, head_dim, dtype, config). Key tiles of 16 where lengths
# sit at 15 / 16 / 17 (the cache's full-tile loop, its masked tail, and chunk tiles across a
# boundary); splits that leave some segments' shares empty.
CASES = [
    ([17], [16], CAUSAL, 1, 16, torch.float32, cfg(block_n=16)),
    ([1, 33], [17, 0], CAUSAL, 4, 64, torch.float32, cfg(block_n=16)),
    ([0, 1, 17], [15, 1, 16], BIDIRECTIONAL, 4, 16, torch.float32, cfg(block_n=16, split=2)),
    ([1, 0, 17, 1, 33], [0, 3, 17, 16, 15], CAUSAL, 1, 16, torch.float32, cfg(block_m=32, block_n=16, split=3)),
    ([1, 1, 1], [1, 0, 17], CAUSAL, 4, 64, torch.float32, cfg(block_m=16, split=4)),
    ([2, 33, 1, 0, 1], [16, 1, 0, 15, 17], BIDIRECTIONAL, 1, 64, torch.float16, cfg(block_n=16)),
    ([1, 17, 1], [16, 0, 17], CAUSAL, 4, 16, torch.float16, cfg(block_n=16, split=2)),
    ([1, 17, 1], [16, 0, 17], BIDIRECTIONAL, 4, 64, torch.bfloat16, cfg(block_n=16, split=2)),
    ([33, 1], [0, 16], CAUSAL, 1, 16, torch.bfloat16, cfg(block_m=32, block_n=16)),
]


@pytest.mark.parametrize("chunks,lengths,pattern,G,D,dtype,config", CASES,
                         ids=[f"B{len(c[0])}-{['causal', 'bidir'][c[2]]}-G{c[3]}-D{c[4]}-{str(c[5])[6:]}-s{c[6]['SPLIT']}"
                              for c in CASES])
def test_single_launch_matches_reference(chunks, lengths, pattern, G, D, dtype, config):
    check(chunks, lengths, pattern, config, G=G, D=D, dtype=dtype)


@pytest.mark.parametrize("config", [cfg(block_n=16), cfg(block_m=16, block_n=16, split=2)])
@pytest.mark.parametrize("G,dtype", [(1, torch.float32), (4, torch.float16)])
def test_quadratic(G, dtype, config):
    """Sub-blocks of 3 (anchor + 2 masks); segments of 2, 1, 0 and 6 sub-blocks, the anchors' mask
    relative to each segment's own first row."""
    check([6, 3, 0, 18], [0, 16, 5, 17], QUADRATIC, config, G=G, dtype=dtype, sub_block=3, seed=G)


def test_autotuned_launch():
    """config=None goes through the tuner (every candidate runs under the interpreter) and still matches."""
    inputs, clean, segs = make([1, 5, 1], [3, 0, 9], G=4)
    with launches.counting() as c:
        got = attention_varlen_triton(*inputs, segs, CAUSAL)
    torch.testing.assert_close(got, attention_varlen_ref(*clean, segs, CAUSAL), **FP32_TOL)
    assert "attention_varlen" in c.configs()


@pytest.mark.parametrize("split", [1, 2])
@pytest.mark.parametrize("chunks,lengths", [([5], [3]), ([1, 7], [0, 16]), ([1, 0, 9, 1, 1], [2, 4, 0, 17, 1])])
def test_one_launch_whatever_the_batch(chunks, lengths, split):
    """One attention launch (+ one combine when split) per call, nothing else: the layout's device
    tensors are built once per Varlen (every layer of a forward reuses them)."""
    inputs, clean, segs = make(chunks, lengths, G=2)
    c = launches.count_calls(lambda: attention_varlen_triton(*inputs, segs, CAUSAL, config=cfg(split=split)))
    want = {"triton:_attn_fwd": 1} | ({"triton:_attn_combine": 1} if split > 1 else {})
    assert c.by_name() == want and c.torch_ops == 0 and c.host_reads == 0
    dev = segs.derived[("triton", inputs[0].device)]
    attention_varlen_triton(*inputs, segs, CAUSAL, config=cfg(split=split))
    assert segs.derived[("triton", inputs[0].device)] is dev
    assert dev.max_rows == max(chunks) and dev.starts.tolist() == list(segs.starts)


@pytest.mark.filterwarnings("ignore::RuntimeWarning")  # the padding rows combine uninitialised partials
def test_device_layout_is_read_on_the_device():
    """A VarlenDevice (the graph-capture form): int32 tensors, a grid bound above this step's longest
    segment, padding rows of q outside every segment; refilled in place, the same call follows the
    new lengths and rows."""
    inputs, clean, segs = make([4, 1, 2], [3, 16, 0], G=2)
    q, k, v, kc, vc = inputs
    pad = lambda x: torch.cat([x, torch.zeros(3, *x.shape[1:], dtype=x.dtype)])  # noqa: E731
    qp, kp, vp = pad(q), pad(k), pad(v)
    dev = VarlenDevice(torch.tensor(segs.starts, dtype=torch.int32), torch.tensor(segs.bases, dtype=torch.int32),
                       torch.tensor(segs.lengths, dtype=torch.int32), segs.region, max_rows=16)
    got = attention_varlen_triton(qp, kp, vp, kc, vc, dev, CAUSAL, config=cfg(block_m=16, split=2))
    torch.testing.assert_close(got[:7], attention_varlen_ref(*clean, segs, CAUSAL), **FP32_TOL)
    # Next step: segment 0 commits its 4 rows and decodes one, segment 1 takes 3 rows, segment 2 is
    # idle. Commit the chunk entries that are now in the cache (clean and the kernel's copy alike).
    new = Varlen([0, 1, 4, 4], segs.bases, [7, 16, 0], segs.region)
    base0 = segs.bases[0]
    for cache, src in ((kc, k), (vc, v), (clean[3], clean[1]), (clean[4], clean[2])):
        cache[:, base0 + 3:base0 + 7] = src[0:4].transpose(0, 1)
    dev.starts.copy_(torch.tensor(new.starts))
    dev.lengths.copy_(torch.tensor(new.lengths))
    got = attention_varlen_triton(qp, kp, vp, kc, vc, dev, CAUSAL, config=cfg(block_m=16, split=2))
    torch.testing.assert_close(got[:4], attention_varlen_ref(clean[0][:4], clean[1][:4], clean[2][:4], clean[3],
                                                             clean[4], new, CAUSAL), **FP32_TOL)


def test_segment_equals_single_sequence_launch():
    """A one-segment varlen launch is the single-sequence kernel on the region view."""
    from trikern.kernels.attention import attention_triton

    inputs, clean, segs = make([9], [17], G=4)
    a, e, base, n = segs.segment(0)
    q, k, v, kc, vc = clean
    region = slice(base, base + segs.region)
    single = attention_triton(q, k, v, kc[:, region], vc[:, region], n, CAUSAL, config=cfg(block_n=16))
    torch.testing.assert_close(attention_varlen_triton(*clean, segs, CAUSAL, config=cfg(block_n=16)), single,
                               **FP32_TOL)
    torch.testing.assert_close(single, attention_ref(q, k, v, kc[:, region], vc[:, region], n), **FP32_TOL)


def test_bad_input_names_the_parameter():
    inputs, _, segs = make([2, 1], [0, 3])
    q, k, v, kc, vc = inputs
    with pytest.raises(ValueError, match="pattern"):
        attention_varlen_triton(q, k, v, kc, vc, segs, TREE)
    with pytest.raises(ValueError, match="segs must be a Varlen"):
        attention_varlen_triton(q, k, v, kc, vc, [0, 2, 3], CAUSAL)
    with pytest.raises(ValueError, match="v_cache"):
        attention_varlen_triton(q, k, v, kc, vc.half(), segs, CAUSAL)
    ok = torch.tensor([0, 2, 3]), torch.tensor([0, 9]), torch.tensor([0, 3])
    with pytest.raises(ValueError, match="VarlenDevice.lengths"):
        attention_varlen_triton(q, k, v, kc, vc, VarlenDevice(*ok[:2], torch.tensor([0.0, 3.0]), segs.region, 2),
                                CAUSAL)
    with pytest.raises(ValueError, match="VarlenDevice.starts"):
        attention_varlen_triton(q, k, v, kc, vc, VarlenDevice(ok[0][:2], *ok[1:], segs.region, 2), CAUSAL)
    with pytest.raises(ValueError, match="VarlenDevice.region"):
        attention_varlen_triton(q, k, v, kc, vc, VarlenDevice(*ok, 10 ** 6, 2), CAUSAL)


def test_empty_batch():
    inputs, _, segs = make([0, 0], [1, 0])
    out = attention_varlen_triton(*inputs, segs, BIDIRECTIONAL)
    assert out.shape == (0, 2, 16)


@pytest.fixture(autouse=True)
def _fresh_tuner():
    yield
    autotune.clear_memo()
