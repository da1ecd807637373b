"""verify reference (acceptance rule + cache commit) against a plain Python loop."""
import pytest
import torch

from trikern.kernels import verify
from trikern.kernels.verify import verify_ref


def loop_greedy(draft, target):
    out = []
    for i in range(len(draft) + 1):
        a = max(range(len(target[i])), key=lambda v: (target[i][v], -v))
        out.append(a)
        if i == len(draft) or a != draft[i]:
            break
    return out


def loop_sampled(draft, p, q, u, e):
    out = []
    for j, d in enumerate(draft):
        if u[j] * q[j][d] < p[j][d]:
            out.append(d)
            continue
        r = [max(a - b, 0.0) for a, b in zip(p[j], q[j])]
        break
    else:
        r = list(p[len(draft)])
    if sum(r) <= 0:
        r = list(p[len(out)])
    out.append(max(range(len(r)), key=lambda v: (r[v] / e[v], -v)))
    return out


@pytest.mark.parametrize("L", [0, 1, 3, 7, 31])
def test_greedy_matches_loop(L):
    g = torch.Generator().manual_seed(L)
    V = 6
    for trial in range(30):
        target = torch.randn(L + 1, V, generator=g)
        a = target.argmax(-1)
        # drafts that agree with the verifier for a random prefix, then (usually) disagree
        k = int(torch.randint(0, L + 1, (1,), generator=g))
        draft = torch.randint(0, V, (L,), generator=g)
        draft[:k] = a[:k]
        tokens, count = verify_ref(draft, target)
        want = loop_greedy(draft.tolist(), target.tolist())
        assert int(count) == len(want)
        assert tokens.tolist() == want + [-1] * (L + 1 - len(want))


@pytest.mark.parametrize("L", [0, 1, 4, 15])
def test_sampled_matches_loop(L):
    g = torch.Generator().manual_seed(100 + L)
    V = 5
    for trial in range(40):
        p = torch.softmax(torch.randn(L + 1, V, generator=g) * 2, -1)
        q = torch.softmax(torch.randn(L, V, generator=g) * 2, -1)
        if trial % 4 == 0:
            q[:, 0] = 0  # zero-probability draft entries must never be accepted by a division by 0
            q = q / q.sum(-1, keepdim=True)
        draft = torch.multinomial(q, 1, generator=g)[:, 0] if L else torch.zeros(0, dtype=torch.long)
        u = torch.rand(L, generator=g)
        e = torch.empty(V).exponential_(1.0, generator=g)
        tokens, count = verify_ref(draft, p, q, u, e)
        want = loop_sampled(draft.tolist(), p.tolist(), q.tolist(), u.tolist(), e.tolist())
        assert int(count) == len(want)
        assert tokens.tolist() == want + [-1] * (L + 1 - len(want))


def test_sampled_rule_is_lossless_one_position():
    """Exact marginal of the first emitted token is p[0], whatever q is (analytic check)."""
    g = torch.Generator().manual_seed(3)
    V, N = 4, 6000
    p = torch.tensor([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
    q = torch.tensor([[0.1, 0.6, 0.1, 0.2]])
    counts = torch.zeros(V)
    for _ in range(N):
        d = torch.multinomial(q, 1, generator=g)[:, 0]
        t, _ = verify_ref(d, p, q, torch.rand(1, generator=g), torch.empty(V).exponential_(generator=g))
        counts[t[0]] += 1
    assert torch.allclose(counts / N, p[0], atol=0.025)  # ~4 sigma at N=6000


@pytest.mark.parametrize("stride,L", [(1, 0), (1, 5), (2, 0), (6, 4), (9, 7)])
def test_cache_commit_keeps_chain(stride, L):
    layers, H, D, n = 2, 3, 4, 5
    slots = n + (L + 1) * stride + 2
    g = torch.Generator().manual_seed(stride * 10 + L)
    k = torch.randn(layers, H, slots, D, generator=g)
    v = torch.randn(layers, H, slots, D, generator=g)
    k0, v0 = k.clone(), v.clone()
    V = 7
    target = torch.randn(L + 1, V, generator=g)
    draft = target.argmax(-1)[:L].clone()
    if L > 2:
        draft[2] = (draft[2] + 1) % V  # reject at the third draft: count = 3
    length = torch.tensor(n)
    tokens, count = verify(draft, target, k_cache=k, v_cache=v, cache_len=length, stride=stride, backend="torch")
    c = int(count)
    assert c == (3 if L > 2 else L + 1)
    assert int(length) == n + c
    assert torch.equal(k[:, :, :n], k0[:, :, :n])
    for j in range(c):
        assert torch.equal(k[:, :, n + j], k0[:, :, n + j * stride])
        assert torch.equal(v[:, :, n + j], v0[:, :, n + j * stride])


def test_bad_inputs_named():
    with pytest.raises(ValueError, match="target"):
        verify_ref(torch.tensor([1, 2]), torch.zeros(2, 4))
    with pytest.raises(ValueError, match="uniforms"):
        verify_ref(torch.tensor([1]), torch.zeros(2, 4), torch.zeros(1, 4), None, torch.ones(4))
    with pytest.raises(ValueError, match="cache_len"):
        verify_ref(torch.tensor([1]), torch.zeros(2, 4), k_cache=torch.zeros(1, 1, 4, 2),
                   v_cache=torch.zeros(1, 1, 4, 2), cache_len=3)
