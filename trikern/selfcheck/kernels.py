"""The kernel checks of `trikern selfcheck`: every Triton op against its PyTorch reference, at one shape.

Data-driven: `CASES` holds one `Case` per check, `Case(name, fn, module=...)`, where `fn(k)` builds
the inputs from `k` (an `Inputs`: the shape's dimensions, device, dtype and a seeded generator) and
returns (what the Triton op gave, what the reference gives). A new kernel needs one entry. The ops
and references are looked up on their modules when a case runs (never bound at import), so a test
can break a reference and see its check fail.

Both sides get the same inputs (cloned where an op writes in place). Float outputs must agree to
the dtype's tolerance (`TOL`: fp32 to summation order, bf16 / fp16 to a few ulps of the output);
integer and boolean outputs (tokens, counts, masks, trees) must be equal. Autotuning is the caller's
choice (selfcheck turns it off: each op runs its first config, and the check costs one compile).
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

import torch

TOL = {torch.float32: (1e-4, 1e-4), torch.float16: (5e-3, 5e-3), torch.bfloat16: (2e-2, 2e-2)}  # (atol, rtol)


def _mod(name: str):
    return importlib.import_module(f"trikern.kernels.{name}")


@dataclass
class Inputs:
    """One check's shape and randomness. T: the chunk (a verify of B), B: the block size, n: the
    committed cache length, long: the longest cache of the run; the model's dimensions as named."""
    device: torch.device
    dtype: torch.dtype
    raw: dict
    B: int
    n: int
    long: int
    seed: int = 0

    def __post_init__(self):
        from ..config import ModelConfig, attention_factor, inv_freq  # noqa: PLC0415

        cfg = ModelConfig.from_dict(dict(self.raw, eos_token_id=None), "selfcheck shapes")
        self.cfg = cfg
        self.H, self.Hq, self.Hkv, self.D = cfg.hidden_size, cfg.num_attention_heads, cfg.num_key_value_heads, \
            cfg.head_dim
        self.I, self.V, self.eps, self.mask_id = cfg.intermediate_size, cfg.vocab_size, cfg.rms_norm_eps, \
            cfg.mask_token_id if cfg.mask_token_id is not None else 0
        r = cfg.rope
        self.rope = (inv_freq(r, self.D).to(self.device), attention_factor(r), r.llama_4_scaling_beta,
                     r.original_max_position_embeddings or 1)
        self.g = torch.Generator(device=self.device).manual_seed(self.seed)

    def randn(self, *shape, dtype=None, scale=1.0):
        return (scale * torch.randn(*shape, generator=self.g, device=self.device)).to(dtype or self.dtype)

    def randint(self, high, *shape):
        return torch.randint(0, high, shape, generator=self.g, device=self.device)

    def positions(self, T):
        return torch.arange(self.n, self.n + T, device=self.device)

    def length(self):
        return torch.tensor(self.n, device=self.device)


@dataclass(frozen=True)
class Case:
    name: str  # the check is "kernels/<name>"
    fn: Callable[[Inputs], tuple]
    module: str | None = None  # a kernel module that may be absent (the check is then skipped)
    exact: bool = False  # every output must be equal (tokens, counts, cache moves)


def compare(got, want, dtype: torch.dtype, exact: bool) -> tuple[bool, str]:
    """(ok, what was compared and how far apart) of two outputs: tensors or tuples of them."""
    ok, detail, _ = _compare(got, want, dtype, exact)
    return ok, detail


def _compare(got, want, dtype, exact) -> tuple[bool, str, float]:
    """(ok, detail, the worst error as a fraction of the tolerance: 0 for equal outputs)."""
    if isinstance(want, (tuple, list)):
        if not isinstance(got, (tuple, list)) or len(got) != len(want):
            return False, f"{len(want)} outputs expected, got {type(got).__name__}", float("inf")
        worst = (True, "equal", 0.0)
        for i, (a, b) in enumerate(zip(got, want)):
            ok, why, frac = _compare(a, b, dtype, exact)
            if not ok:
                return False, f"output {i}: {why}", frac
            worst = max(worst, (ok, why, frac), key=lambda x: x[2])
        return worst
    if not torch.is_tensor(want):
        return got == want, f"{got!r} vs {want!r}", 0.0 if got == want else float("inf")
    if not torch.is_tensor(got) or tuple(got.shape) != tuple(want.shape):
        return False, f"shape {tuple(getattr(got, 'shape', ()))} vs {tuple(want.shape)}", float("inf")
    a, b = got.detach().cpu(), want.detach().cpu()
    if exact or not b.dtype.is_floating_point:
        if torch.equal(a.to(b.dtype), b):
            return True, "equal", 0.0
        return False, f"{int((a.to(b.dtype) != b).sum())} of {b.numel()} entries differ", float("inf")
    atol, rtol = TOL.get(dtype, TOL[torch.float32])
    a, b = a.double(), b.double()
    fa, fb = torch.isfinite(a), torch.isfinite(b)
    if not torch.equal(fa, fb) or not torch.equal(a[~fa], b[~fb]):  # inf where inf, NaN where NaN
        if not (a[~fa].isnan().all() and b[~fb].isnan().all() and torch.equal(fa, fb)):
            return False, "non-finite values differ", float("inf")
    a, b = a[fa], b[fb]
    err = (a - b).abs()
    frac = float((err / (atol + rtol * b.abs())).max()) if err.numel() else 0.0
    return frac <= 1.0, f"max abs err {float(err.max()) if err.numel() else 0.0:.2e} ({frac:.2f} of the tolerance)", frac


# -- the cases ------------------------------------------------------------------------------------------
def _attention(pattern_name: str, T_of, sub_block_of=lambda k: 0, tree=None, long=False):
    def fn(k: Inputs):
        A = _mod("attention")
        n = k.long if long else k.n
        T = T_of(k)
        q, kk, v = k.randn(T, k.Hq, k.D), k.randn(T, k.Hkv, k.D), k.randn(T, k.Hkv, k.D)
        kc, vc = k.randn(k.Hkv, n + T, k.D), k.randn(k.Hkv, n + T, k.D)
        pattern = getattr(A, pattern_name)
        sub = tree(k) if tree else sub_block_of(k)
        got = A.attention_triton(q, kk, v, kc, vc, torch.tensor(n, device=k.device), pattern, sub)
        return got, A.attention_ref(q, kk, v, kc, vc, n, pattern, sub)
    return fn


def _tree_mask(nodes_of, sub_of=lambda k: 1):
    def make(k: Inputs):
        A, TR = _mod("attention"), _mod("tree")
        logp = torch.log_softmax(k.randn(k.B, k.V, dtype=torch.float32), -1).cpu()
        tree = TR.build_tree_ref(logp, torch.tensor([1]), nodes_of(k), 4)
        return A.TreeMask(TR.ancestors_from_parents(tree.parents).to(k.device), sub_of(k))
    return make


def _rope(k: Inputs):
    R = _mod("rope")
    q, kk = k.randn(k.B, k.Hq, k.D), k.randn(k.B, k.Hkv, k.D)
    pos = k.positions(k.B) + 20000 * (k.long > 1024)  # past the llama-4 scaling's first period at NLD shapes
    return R.rope_triton(q, kk, pos, *k.rope), R.rope_ref(q, kk, pos, *k.rope)


def _rmsnorm(k: Inputs):
    R = _mod("rmsnorm")
    x, w = k.randn(k.B, k.H), k.randn(k.H, scale=0.1) + 1
    return R.rmsnorm_triton(x, w, k.eps), R.rmsnorm_ref(x, w, k.eps)


def _add_rmsnorm(k: Inputs):
    R = _mod("rmsnorm")
    x, r, w = k.randn(k.B, k.H), k.randn(k.B, k.H), k.randn(k.H, scale=0.1) + 1
    return R.add_rmsnorm_triton(x, r, w, k.eps), R.add_rmsnorm_ref(x, r, w, k.eps)


def _swiglu(k: Inputs):
    S = _mod("swiglu")
    g, u = k.randn(k.B, k.I), k.randn(k.B, k.I)
    return S.swiglu_triton(g, u), S.swiglu_ref(g, u)


def _planted_logits(k: Inputs, draft, agree: int):
    """Verifier logits whose argmax follows `draft` for the first `agree` rows."""
    target = k.randn(draft.shape[0] + 1, k.V, dtype=torch.float32)
    rows = torch.arange(agree, device=k.device)
    target[rows, draft[:agree]] += 50.0
    return target.to(k.dtype)


def _verify_greedy(k: Inputs):
    Vf = _mod("verify")
    draft = k.randint(k.V, k.B - 1)
    target = _planted_logits(k, draft, (k.B - 1) // 2)
    return (Vf.verify_triton(draft, target, None, None, None, None, None, None, 1),
            Vf.verify_ref(draft, target))


def _verify_sampled(k: Inputs):
    Vf = _mod("verify")
    L = k.B - 1
    p = torch.softmax(k.randn(L + 1, k.V, dtype=torch.float32, scale=3.0), -1)
    q = torch.softmax(k.randn(L, k.V, dtype=torch.float32, scale=3.0), -1)
    draft = torch.multinomial(q, 1, generator=k.g)[:, 0]
    u = torch.rand(L, generator=k.g, device=k.device)
    noise = torch.empty(k.V, device=k.device).exponential_(generator=k.g)
    return Vf.verify_triton(draft, p, q, u, noise, None, None, None, 1), Vf.verify_ref(draft, p, q, u, noise)


def _verify_quadratic_commit(k: Inputs):
    """Greedy verify of a quadratic pass: the chain's K/V at stride B+1 compacted, the length advanced."""
    Vf = _mod("verify")
    draft = k.randint(k.V, k.B - 1)
    target = _planted_logits(k, draft, k.B // 2)
    slots = k.n + k.B * (k.B + 1)
    kc, vc = k.randn(2, k.Hkv, slots, k.D), k.randn(2, k.Hkv, slots, k.D)
    mine = (kc.clone(), vc.clone(), k.length())
    ref = (kc.clone(), vc.clone(), k.length())
    got = Vf.verify_triton(draft, target, None, None, None, *mine, k.B + 1)
    want = Vf.verify_ref(draft, target, None, None, None, *ref, k.B + 1)
    return (*got, *mine), (*want, *ref)


def _reveal(sampled: bool):
    def fn(k: Inputs):
        Rv = _mod("reveal")
        logits = k.randn(k.B, k.V, dtype=torch.float32, scale=4.0)
        logits[1, 3] += 60.0  # one confident position: a reveal by the threshold besides the best
        logits = logits.to(k.dtype)
        tokens, masked = k.randint(k.V, k.B), torch.ones(k.B, dtype=torch.bool, device=k.device)
        masked[0] = False
        probs = noise = None
        if sampled:
            probs = torch.softmax(logits.float() / 0.7, -1)
            noise = torch.empty(k.B, k.V, device=k.device).exponential_(generator=k.g)
        args = (tokens, masked, logits, 0.9, k.mask_id, probs, noise)
        return Rv.reveal_triton(*args), Rv.reveal_ref(*args)
    return fn


def _build_tree(k: Inputs):
    TR = _mod("tree")
    logp = torch.log_softmax(k.randn(k.B, k.V, dtype=torch.float32, scale=2.0), -1)
    root = k.randint(k.V, 1)
    nodes = min(4 * k.B, TR.MAX_NODES)
    return tuple(TR.build_tree_triton(logp, root, nodes, 4)), tuple(TR.build_tree_ref(logp, root, nodes, 4))


def _draft_tree(k: Inputs):
    DT = _mod("draft_tree")
    anchors = k.randint(k.V, k.B)
    return (DT.draft_tree_triton(anchors, k.length(), k.B + 1, k.mask_id),
            DT.draft_tree_ref(anchors, k.length(), k.B + 1, k.mask_id))


def _tree_verify(k: Inputs):
    """The device op (torch ops, no host sync) against the CPU backend's walk on host copies."""
    TR, TV = _mod("tree"), _mod("tree_verify")
    CT = importlib.import_module("trikern.kernels.cpu.tree_verify")
    logp = torch.log_softmax(k.randn(k.B, k.V, dtype=torch.float32, scale=2.0), -1)
    tree = TR.build_tree_ref(logp.cpu(), torch.tensor([1]), 2 * k.B, 3)
    N = tree.tokens.shape[0]
    target = k.randn(N, k.V, dtype=torch.float32).cpu()
    u = 0
    for _ in range(k.B // 2):  # the verifier agrees with the tree down its first children
        kids = [i for i in range(1, N) if int(tree.parents[i]) == u]
        if not kids:
            break
        target[u, int(tree.tokens[kids[0]])] += 50.0
        u = kids[0]
    slots = k.n + N
    kc, vc = k.randn(2, k.Hkv, slots, k.D).cpu(), k.randn(2, k.Hkv, slots, k.D).cpu()
    dev = [x.to(k.device) for x in tree] + [target.to(k.device)]
    mine = (kc.clone().to(k.device), vc.clone().to(k.device), k.length())
    ref = (kc.clone(), vc.clone(), torch.tensor(k.n))
    got = TV.tree_verify(*dev, None, None, k.B, *mine, 1)
    want = CT.tree_verify(*tree, target, None, None, k.B, *ref, 1)
    return (*got, *mine), (*want, *ref)


def _quant_linear(fmt: str):
    def fn(k: Inputs):
        Q, QW = _mod("quant_linear"), _mod("qweight")
        K = k.Hq * k.D  # o_proj
        W = k.randn(k.H, K, dtype=torch.float32, scale=0.02)
        group = max(g for g in (32, 64, 128) if K % g == 0)
        w = QW.quantize_int4(W, group, scale_dtype=k.dtype) if fmt == "int4" else QW.quantize_fp8(W)
        x = k.randn(k.B, K)
        return Q.quant_linear_triton(x, w), Q.quant_linear_ref(x, w)
    return fn


def _fused(op: str):
    """One of fused_linear.py's four ops at the layer's shapes (weights in the layouts it takes)."""
    def fn(k: Inputs):
        F = _mod("fused_linear")
        M, H, qd = k.B, k.H, k.Hq * k.D
        nw = k.randn(H, scale=0.1) + 1
        if op == "linear_residual":
            args = (k.randn(M, qd), k.randn(H, qd, scale=0.02), k.randn(M, H))
        elif op == "norm_linear":
            args = (k.randn(M, H), nw, k.eps, k.randn(qd, H, scale=0.02))
        elif op == "norm_gate_up_swiglu":
            W = F.interleave_gate_up(k.randn(k.I, H, scale=0.02), k.randn(k.I, H, scale=0.02))
            args = (k.randn(M, H), nw, k.eps, W)
        else:
            W = F.interleave_qkv(k.randn((k.Hq + 2 * k.Hkv) * k.D, H, scale=0.02), k.Hq, k.Hkv, k.D)
            kc, vc = k.randn(k.Hkv, k.n + M, k.D), k.randn(k.Hkv, k.n + M, k.D)
            x, pos = k.randn(M, H), k.positions(M)
            mine, ref = (kc.clone(), vc.clone()), (kc.clone(), vc.clone())
            got = F.norm_qkv_rope_cache_triton(x, nw, k.eps, W, pos, *k.rope, *mine, pos)
            want = F.norm_qkv_rope_cache_ref(x, nw, k.eps, W, pos, *k.rope, *ref, pos)
            return (*got, *mine), (*want, *ref)
        return getattr(F, f"{op}_triton")(*args), getattr(F, f"{op}_ref")(*args)
    return fn


def _quadratic_T(k):
    return k.B * (k.B + 1)


CASES: list[Case] = [
    Case("attention/causal-ar", _attention("CAUSAL", lambda k: 1)),
    Case("attention/causal-ar-long-cache", _attention("CAUSAL", lambda k: 1, long=True)),
    Case("attention/causal-verify", _attention("CAUSAL", lambda k: k.B)),
    Case("attention/bidirectional-draft", _attention("BIDIRECTIONAL", lambda k: k.B)),
    Case("attention/quadratic", _attention("QUADRATIC", _quadratic_T, lambda k: k.B + 1)),
    Case("attention/tree", _attention("TREE", lambda k: 2 * k.B, tree=_tree_mask(lambda k: 2 * k.B))),
    Case("attention/tree-quadratic", _attention("TREE", _quadratic_T,
                                                tree=_tree_mask(lambda k: k.B, lambda k: k.B + 1))),
    Case("rope", _rope),
    Case("rmsnorm", _rmsnorm),
    Case("add_rmsnorm", _add_rmsnorm),
    Case("swiglu", _swiglu),
    Case("verify/greedy", _verify_greedy, exact=True),
    Case("verify/sampled", _verify_sampled, exact=True),
    Case("verify/quadratic-commit", _verify_quadratic_commit, exact=True),
    Case("reveal/greedy", _reveal(False), exact=True),
    Case("reveal/sampled", _reveal(True), exact=True),
    Case("build_tree", _build_tree, exact=True),
    Case("draft_tree", _draft_tree, exact=True),
    Case("tree_verify", _tree_verify, exact=True),
    Case("quant_linear/int4", _quant_linear("int4")),
    Case("quant_linear/fp8", _quant_linear("fp8")),
    *(Case(f"fused_linear/{op}", _fused(op), module="fused_linear")
      for op in ("linear_residual", "norm_linear", "norm_gate_up_swiglu", "norm_qkv_rope_cache")),
]
