"""No host sync inside a decode step: each step traces into ONE graph under
torch.compile(fullgraph=True) (any .item(), .tolist() or data-dependent Python branch would break
the graph and fail), and the compiled step computes what the eager step computes.

backend="eager" keeps it quick: dynamo's full-graph trace is the proof, code generation adds
nothing to it. Dynamo cannot trace a torch.Generator object, so the sampled steps run here on the
default RNG (generator=None); that object is the only difference from the real loop's steps.
"""
import pytest
import torch
from decode_helpers import run  # noqa: F401  (sets the thread count)
from util import random_model, tiny_config

from trikern.decode.common import DecodeContext, GenerationConfig
from trikern.decode.diffusion import Diffusion
from trikern.decode.spec_linear import LinearSpec
from trikern.decode.spec_quadratic import QuadraticSpec

PROMPT = torch.tensor([1, 2, 3, 4])


def context(mode, T):
    m = random_model(tiny_config(num_hidden_layers=1), seed=0)
    ctx = DecodeContext(m, GenerationConfig(max_new_tokens=20, block_size=4, temperature=T, seed=0), 4, mode)
    ctx.generator = None
    ctx.prefill(PROMPT)
    return ctx


def linear(ctx):
    return LinearSpec(ctx).step, (torch.tensor([7]),)


def quadratic(ctx):
    spec = QuadraticSpec(ctx)
    q = None if ctx.gen.temperature <= 0 else torch.softmax(torch.randn(3, ctx.cfg.vocab_size), -1)
    return spec.step, (torch.tensor([7, 8, 9, 10]), q)


def diffusion(ctx):
    dif = Diffusion(ctx)

    def step(seed):  # a denoise pass and a commit
        tokens, masked, pos = dif.block(seed)
        tokens, masked = dif.denoise(tokens, masked, pos)
        return tokens, masked, dif.commit(tokens, pos, torch.full((), 4))
    return step, (torch.tensor([7]),)


@pytest.mark.parametrize("mode,build,T", [("spec-linear", linear, 0.0), ("spec-quadratic", quadratic, 1.0),
                                          ("diffusion", diffusion, 1.0)])
def test_step_compiles_to_one_graph(mode, build, T):
    torch._dynamo.reset()
    with torch.inference_mode():
        ctx_c, ctx_e = context(mode, T), context(mode, T)
        step_c, args = build(ctx_c)
        step_e, _ = build(ctx_e)
        torch.manual_seed(0)
        got = torch.compile(step_c, fullgraph=True, dynamic=False, backend="eager")(*args)
        torch.manual_seed(0)
        want = step_e(*args)
    for g, w in zip(got, want):
        assert (g is None and w is None) or torch.equal(g, w)
    assert torch.equal(ctx_c.cache.length, ctx_e.cache.length)
    n = int(ctx_c.cache.length)
    torch.testing.assert_close(ctx_c.cache.k[:, :, :n], ctx_e.cache.k[:, :, :n])
