"""No host sync inside a decode step: every pass the driver hands to its step runner traces into
ONE graph under torch.compile(fullgraph=True) -- any .item(), .tolist() or data-dependent Python
branch would break the graph and fail -- and a whole generation through the compiled passes gives
the eager generation's tokens, in every mode (auto included).

The test hands the driver a runner that compiles each pass instead of its StepRunner (eager on
CPU, CUDA graphs on CUDA), so what is checked is exactly what the loop runs. backend="eager" keeps it quick:
dynamo's full-graph trace is the proof. Dynamo cannot trace a torch.Generator object, so the
sampled runs use the default RNG (ctx.generator = None), seeded the same for both runs.
"""
import pytest
import torch
from decode_helpers import run  # noqa: F401  (sets the thread count)
from util import random_model, tiny_config

from trikern.decode import MODES, GenerationConfig, drive, new_context, policy_for

PROMPT = [1, 2, 3, 4]


class CompilingRunner:
    """Runs every pass through torch.compile(fullgraph=True), one compiled function per key."""

    def __init__(self, ctx):
        self.compiled = {}

    def __call__(self, key, fn, *args):
        if key not in self.compiled:
            self.compiled[key] = torch.compile(fn, fullgraph=True, dynamic=False, backend="eager")
        return self.compiled[key](*args)


def generate(model, mode, T, runner=None):
    ctx = new_context(model, GenerationConfig(max_new_tokens=12, block_size=4, temperature=T, seed=0),
                      len(PROMPT), mode)
    ctx.generator = None
    torch.manual_seed(0)
    runner = runner and runner(ctx)
    return [t for c in drive(ctx, torch.tensor(PROMPT), policy_for(ctx, mode), runner) for t in c], ctx


@pytest.mark.parametrize("T", [0.0, 1.0])
@pytest.mark.parametrize("mode", MODES)
def test_every_pass_compiles_to_one_graph(monkeypatch, mode, T):
    torch._dynamo.reset()
    torch._dynamo.config.cache_size_limit = 64
    model = random_model(tiny_config(num_hidden_layers=1), seed=0)
    want, ctx_e = generate(model, mode, T)
    got, ctx_c = generate(model, mode, T, CompilingRunner)
    assert len(got) == 12
    if mode == "auto" and T > 0:
        return  # auto's choices follow measured step times: sampled tokens differ run to run
    assert got == want
    if mode != "auto":
        assert ctx_c.stats.forwards == ctx_e.stats.forwards
    n = int(ctx_c.cache.length)
    torch.testing.assert_close(ctx_c.cache.k[:, :, :n], ctx_e.cache.k[:, :, :n])
