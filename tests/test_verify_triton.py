"""verify Triton kernels (interpreter) against verify_ref: greedy and sampled rules, argmax ties, the
cache commit at stride 1 and B+1, every scan config, the public dispatcher.

Everything is exact: tokens, count, cache contents and cache_len must equal the reference's.
"""
import importlib

import pytest
import torch

from trikern.kernels import verify

V_ = importlib.import_module("trikern.kernels.verify")
LS = [0, 1, 2, 7, 8, 31]
VS = [7, 100, 1000, 1025]
DTYPES = [torch.float32, torch.float16, torch.bfloat16]
SCENARIOS = ["all", "none", "partial"]


def gen(seed):
    return torch.Generator().manual_seed(seed)


def greedy_case(L, V, dtype, scenario, seed):
    """Logits [L+1, V] in `dtype` and drafts that agree with their argmax all / not at all / for a prefix."""
    g = gen(seed)
    target = (torch.randn(L + 1, V, generator=g) * 3).to(dtype)
    a = target.float().argmax(-1)
    draft = a[:L].clone()
    wrong = (draft + 1 + torch.randint(0, V - 1, (L,), generator=g)) % V  # never the argmax
    if scenario == "none":
        draft = wrong
    elif scenario == "partial" and L:
        k = int(torch.randint(0, L, (1,), generator=g))
        draft[k] = wrong[k]
    return draft, target


def sampled_case(L, V, scenario, seed):
    """(draft, p, q, uniforms, noise) with acceptance forced all / none / at a random point."""
    g = gen(seed)
    p = torch.softmax(torch.randn(L + 1, V, generator=g) * 2, -1)
    q = torch.softmax(torch.randn(L, V, generator=g) * 2, -1)
    draft = torch.multinomial(q, 1, generator=g)[:, 0] if L else torch.zeros(0, dtype=torch.long)
    u = torch.rand(L, generator=g)
    if scenario == "all":
        u.zero_()  # 0 * q < p for every drafted token with p > 0
    elif scenario == "none":
        u.fill_(0.999)
        pd = p[:L].gather(1, draft[:, None])[:, 0]
        q[torch.arange(L), draft] = pd / 0.9 + 1e-3  # u * q > p: rejected at the first draft
    noise = torch.empty(V).exponential_(1.0, generator=g)
    return draft, p, q, u, noise


def run_both(args, config, cache=None, stride=1):
    kw_t, kw_r = {}, {}
    if cache is not None:
        k, v, n = cache
        kw_t = dict(k_cache=k.clone(), v_cache=v.clone(), cache_len=n.clone())
        kw_r = dict(k_cache=k.clone(), v_cache=v.clone(), cache_len=n.clone())
    draft, target, q, u, e = args
    got = V_.verify_triton(draft, target, q, u, e, kw_t.get("k_cache"), kw_t.get("v_cache"),
                           kw_t.get("cache_len"), stride, config=config)
    want = V_.verify_ref(draft, target, q, u, e, stride=stride, **kw_r)
    assert got[0].dtype == torch.long and got[1].dtype == torch.long and got[1].dim() == 0
    assert got[0].tolist() == want[0].tolist() and int(got[1]) == int(want[1])
    if cache is not None:
        for name in ("k_cache", "v_cache", "cache_len"):
            assert torch.equal(kw_t[name], kw_r[name]), name
    return int(want[1])


@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("L", LS)
def test_greedy_sweep(L, V):
    i = LS.index(L) + VS.index(V)  # rotate scenario, dtype and config over the grid
    scenario, dtype = SCENARIOS[i % 3], DTYPES[(i // 3 + LS.index(L)) % 3]
    draft, target = greedy_case(L, V, dtype, scenario, seed=L * 7 + V)
    count = run_both((draft, target, None, None, None), V_.CONFIGS[i % len(V_.CONFIGS)])
    assert count == {"all": L + 1, "none": 1}.get(scenario, count)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_greedy_dtypes_and_outcomes(dtype, scenario):
    L = 7
    draft, target = greedy_case(L, 1025, dtype, scenario, seed=3)
    count = run_both((draft, target, None, None, None), V_.CONFIGS[1])
    if scenario == "partial":
        assert 1 <= count <= L
    else:
        assert count == (L + 1 if scenario == "all" else 1)


@pytest.mark.parametrize("dtype", DTYPES)
def test_greedy_argmax_ties_lowest_index(dtype):
    """Equal maxima within a tile, across the tile / split boundary at 1024 and at the row's ends."""
    V = 1025
    target = torch.zeros(4, V, dtype=dtype)
    target[0, [5, 700, 1024]] = 2.0   # within tile 0 and in tile 1: 5
    target[1, [1023, 1024]] = 2.0     # either side of the boundary: 1023
    target[2, [1024]] = 2.0
    target[2, [0]] = 2.0              # first and last column: 0
    target[3, :] = 1.0                # a flat row: 0
    for cfg in (V_.CONFIGS[0], V_.CONFIGS[1]):  # one program per row; the row split in two
        draft = torch.tensor([5, 1023, 0])
        tokens, count = V_.verify_triton(draft, target, None, None, None, None, None, None, 1, config=cfg)
        assert tokens.tolist() == [5, 1023, 0, 0] and int(count) == 4
        run_both((torch.tensor([5, 1024, 0]), target, None, None, None), cfg)  # the tie lost at row 1


@pytest.mark.parametrize("V", VS)
@pytest.mark.parametrize("L", LS)
def test_sampled_sweep(L, V):
    i = LS.index(L) + VS.index(V)
    scenario = SCENARIOS[i % 3]
    draft, p, q, u, e = sampled_case(L, V, scenario, seed=100 + L * 7 + V)
    count = run_both((draft, p, q, u, e), V_.CONFIGS[(i + 2) % len(V_.CONFIGS)])
    assert count == {"all": L + 1, "none": 1}.get(scenario, count)


def test_sampled_residual_without_mass_falls_back_to_p():
    """q == p at the rejected row: r = 0 everywhere, the draw comes from p[c]."""
    L, V = 2, 1025
    draft, p, q, u, e = sampled_case(L, V, "none", seed=5)
    q[0] = p[0]
    u[0] = 1.0  # u * q == p: rejected
    run_both((draft, p, q, u, e), V_.CONFIGS[1])


def test_sampled_ties_and_zero_probability_drafts():
    L, V = 3, 1025
    p = torch.zeros(L + 1, V)
    p[:, [3, 1000, 1024]] = 1 / 3   # equal residual scores with unit noise: the lowest index
    q = torch.zeros(L, V)
    q[:, 7] = 1.0                   # drafts have p = 0: never accepted, whatever u is
    draft = torch.full((L,), 7)
    u = torch.zeros(L)
    e = torch.ones(V)
    for cfg in (V_.CONFIGS[0], V_.CONFIGS[3]):
        tokens, count = V_.verify_triton(draft, p, q, u, e, None, None, None, 1, config=cfg)
        assert tokens.tolist() == [3, -1, -1, -1] and int(count) == 1
    run_both((draft, p, q, u, e), V_.CONFIGS[2])


@pytest.mark.parametrize("sampled", [False, True])
def test_every_config(sampled):
    L, V = 3, 1025
    for i, cfg in enumerate(V_.CONFIGS):
        if sampled:
            args = sampled_case(L, V, SCENARIOS[i % 3], seed=i)
        else:
            args = (*greedy_case(L, V, torch.float32, SCENARIOS[i % 3], seed=i), None, None, None)
        run_both(args, cfg)


def make_cache(L, stride, dtype, seed, n=5, layers=2, H=2, D=24):
    slots = n + (L + 1) * stride + 3
    g = gen(seed)
    k = torch.randn(layers, H, slots, D, generator=g).to(dtype)
    v = torch.randn(layers, H, slots, D, generator=g).to(dtype)
    return k, v, torch.tensor(n)


@pytest.mark.parametrize("L", [0, 1, 7, 31])
@pytest.mark.parametrize("quadratic", [False, True])
def test_cache_commit_greedy(L, quadratic):
    """Linear (stride 1, a pure length update) and quadratic (stride B+1 = L+2) commits."""
    stride = L + 2 if quadratic else 1
    draft, target = greedy_case(L, 100, torch.float32, "partial", seed=L)
    dtype = torch.bfloat16 if quadratic else torch.float32
    run_both((draft, target, None, None, None), V_.CONFIGS[0], make_cache(L, stride, dtype, L), stride)


@pytest.mark.parametrize("L,stride", [(2, 4), (8, 10), (31, 2)])
def test_cache_commit_sampled(L, stride):
    """Overlapping source / destination slots (stride 2 over 32 slots spans two BLOCK_J chunks)."""
    args = sampled_case(L, 100, "partial", seed=L)
    run_both(args, V_.CONFIGS[1], make_cache(L, stride, torch.float16, L), stride)


def test_cache_strided_views():
    """K/V as non-contiguous views (a slice of a wider head_dim buffer), cache_len past 0."""
    L, stride = 5, 7
    k, v, n = make_cache(L, stride, torch.float32, 1, n=9, D=40)
    draft, target = greedy_case(L, 7, torch.float32, "partial", seed=1)
    kt, vt, nt = k.clone(), v.clone(), n.clone()
    V_.verify_triton(draft, target, None, None, None, kt[..., 3:27], vt[..., 3:27], nt, stride,
                     config=V_.CONFIGS[0])
    kr, vr, nr = k.clone(), v.clone(), n.clone()
    V_.verify_ref(draft, target, k_cache=kr[..., 3:27], v_cache=vr[..., 3:27], cache_len=nr, stride=stride)
    assert torch.equal(kt, kr) and torch.equal(vt, vr) and torch.equal(nt, nr)


@pytest.mark.parametrize("sampled", [False, True])
def test_dispatcher_triton_matches_torch(sampled):
    L, V, stride = 3, 100, 5
    args = sampled_case(L, V, "partial", seed=9) if sampled else \
        (*greedy_case(L, V, torch.float32, "partial", seed=9), None, None, None)
    out = []
    for backend in ("triton", "torch"):
        k, v, n = make_cache(L, stride, torch.float32, 2)
        out.append((*verify(*args, k_cache=k, v_cache=v, cache_len=n, stride=stride, backend=backend), k, v, n))
    assert all(torch.equal(a, b) for a, b in zip(*out))


def test_bad_inputs_named():
    t = torch.zeros(2, 4)
    with pytest.raises(ValueError, match="target"):
        V_.verify_triton(torch.tensor([1, 2]), t, None, None, None, None, None, None, 1)
    with pytest.raises(ValueError, match="vocabulary"):
        V_.verify_triton(torch.tensor([1]), torch.zeros(2, 0), None, None, None, None, None, None, 1)
    with pytest.raises(TypeError, match="target"):
        V_.verify_triton(torch.tensor([1]), t.long(), None, None, None, None, None, None, 1)
    with pytest.raises(ValueError, match="at most"):
        V_.verify_triton(torch.zeros(V_.MAX_CHAIN, dtype=torch.long), torch.zeros(V_.MAX_CHAIN + 1, 4),
                         None, None, None, None, None, None, 1)
    k = torch.zeros(1, 1, 8, 2)
    with pytest.raises(TypeError, match="v_cache"):
        V_.verify_triton(torch.tensor([1]), t, None, None, None, k, k.half(), torch.tensor(0), 1)
    with pytest.raises(TypeError, match="cache_len"):
        V_.verify_triton(torch.tensor([1]), t, None, None, None, k, k, torch.tensor(0.0), 1)
    with pytest.raises(ValueError, match="stride"):
        V_.verify_triton(torch.tensor([1]), t, None, None, None, None, None, None, 0)


def test_tuning_commits_the_cache_once(monkeypatch, tmp_path):
    """A launch that tunes benchmarks the (pure) vocabulary scan once per config, but the in-place
    compaction and the cache_len update run once: the cache equals the reference's."""
    from trikern.kernels import autotune

    monkeypatch.setenv("TRIKERN_AUTOTUNE_DIR", str(tmp_path))  # nothing stored: this launch tunes
    monkeypatch.delenv("TRIKERN_AUTOTUNE", raising=False)
    autotune.enable()
    autotune.clear_memo()
    swept = []
    bench = autotune._bench_cpu
    monkeypatch.setattr(autotune, "_bench_cpu", lambda configs, run: swept.append(len(configs)) or bench(configs, run))
    L, stride = 7, 9
    args = (*greedy_case(L, 1000, torch.float32, "partial", seed=3), None, None, None)
    run_both(args, None, make_cache(L, stride, torch.float32, L), stride)
    assert swept == [len(V_.CONFIGS)]
    autotune.clear_memo()
