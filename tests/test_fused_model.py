"""The fused decoder layer (Transformer.fuse: five launches per layer, kernels/fused_linear.py) gives
the unfused model's logits and cache, in every attention pattern and with the cache written, and its
self-speculation stays lossless: spec == AR token for token."""
import pytest
import torch
from decode_helpers import run
from util import random_model, tiny_config

from trikern.cache import KVCache
from trikern.kernels import BIDIRECTIONAL, CAUSAL, QUADRATIC

TOL = dict(atol=2e-4, rtol=2e-4)  # fp32: the fused products sum in another order


def pair(backend, **cfg_kw):
    cfg = tiny_config(**cfg_kw)
    plain = random_model(cfg, seed=5, backend=backend)
    fused = random_model(cfg, seed=5, backend=backend).fuse()
    return plain, fused


def forward_both(plain, fused, T, pattern, sub_block=0, write=True, n=5):
    cfg = plain.cfg
    caches = []
    for m in (plain, fused):
        c = KVCache.for_model(cfg, 32, torch.float32, "cpu", scratch=T)
        g = torch.Generator().manual_seed(1)
        c.k.copy_(torch.randn(c.k.shape, generator=g))
        c.v.copy_(torch.randn(c.v.shape, generator=g))
        c.length.fill_(n)
        caches.append(c)
    tokens = torch.randint(0, cfg.vocab_size, (T,), generator=torch.Generator().manual_seed(T))
    pos = torch.arange(n, n + T)
    outs = [m.forward(tokens, pos, c, pattern, write_cache=write, sub_block=sub_block) for m, c in zip((plain, fused), caches)]
    return outs, caches


@pytest.mark.parametrize("backend", ["torch", "triton"])
@pytest.mark.parametrize("T,pattern,sub", [(1, CAUSAL, 0), (7, CAUSAL, 0), (4, BIDIRECTIONAL, 0), (6, QUADRATIC, 3)])
def test_fused_forward_equals_unfused(backend, T, pattern, sub):
    if backend == "triton":
        import os
        if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
            pytest.skip("backend='triton' on CPU needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    plain, fused = pair(backend, num_hidden_layers=2)
    (a, b), (ca, cb) = forward_both(plain, fused, T, pattern, sub)
    torch.testing.assert_close(b, a, **TOL)
    torch.testing.assert_close(cb.k, ca.k, **TOL)  # the chunk's K/V in the same scratch slots, nothing else
    torch.testing.assert_close(cb.v, ca.v, **TOL)


def test_fused_model_refuses_its_checkpoint_layout_and_quantized_linears():
    _, fused = pair("torch", num_hidden_layers=1)
    with pytest.raises(RuntimeError, match="fused"):
        fused.checkpoint_state()
    cpu = random_model(tiny_config(num_hidden_layers=1), backend="cpu")
    assert not cpu.fusable()
    with pytest.raises(ValueError, match="fuse: needs plain linears"):
        cpu.fuse()


@pytest.mark.parametrize("mode,B", [("spec-linear", 4), ("spec-quadratic", 3)])
def test_fused_self_speculation_is_lossless(mode, B):
    plain, fused = pair("torch", num_hidden_layers=2)
    prompt = [3, 17, 5, 9, 21]
    ar = run(fused, prompt, "ar", max_new_tokens=12)[0]
    assert run(fused, prompt, mode, block_size=B, max_new_tokens=12)[0] == ar
    assert run(plain, prompt, "ar", max_new_tokens=12)[0] == ar


def test_fused_batched_decoding_equals_unfused():
    from trikern.batch import generate_batch
    plain, fused = pair("torch", num_hidden_layers=2)
    prompts = [[3, 17, 5], [9, 21, 4, 4, 8, 1], [2]]
    for mode, B in (("ar", None), ("spec-linear", 3)):
        assert generate_batch(fused, prompts, mode, max_batch=2, block_size=B, max_new_tokens=9) == \
            generate_batch(plain, prompts, mode, max_batch=2, block_size=B, max_new_tokens=9)
