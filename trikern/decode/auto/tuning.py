"""`trikern tune --decode`'s measurement: real steps of every auto candidate, timed in turns."""
from __future__ import annotations

import statistics

import torch

from ...kernels import autotune
from ..context import GenerationConfig
from ..driver import drive
from ..registry import AUTO, candidates, new_context
from .policy import FixedPolicy
from .profile import StepProfile


def measure(model, cache_lengths=(256, 2048), steps: int = 4, block_size=None, log=print) -> StepProfile:
    """Time `steps` warm steps of every auto candidate at each cache length (a random prompt of that
    length, greedy) and persist the median. The candidates take turns step by step, so a slow spell
    of a shared machine lands on all of them alike. Tokens per step are the random prompt's: a floor."""
    cfg = model.cfg
    device = model.embed_tokens.weight.device
    keys = candidates(AUTO, block_size or cfg.block_size, cfg)
    prof = None
    for n in cache_lengths:
        n = min(int(n), cfg.max_position_embeddings - 64)
        prompt = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).to(device)
        timings = {key: [] for key in keys}
        running = {}
        for key in keys:
            gen = GenerationConfig(max_new_tokens=8 * key[1] * (steps + 4) + 16, block_size=key[1])
            ctx = new_context(model, gen, n, key[0])
            running[key] = drive(ctx, prompt, FixedPolicy(key),
                                 on_step=lambda k, t, s, cold: cold or timings[k].append((t, s)))
        for _ in range(steps + 4):  # a few more rounds than warm steps needed: the first may be cold
            for key, it in list(running.items()):
                if len(timings[key]) >= steps or next(it, None) is None:
                    running.pop(key).close()
        for it in running.values():
            it.close()
        prof = prof or StepProfile(model, n)
        prof.bucket = autotune.bucket(n, floor=256)
        for key in keys:
            if timings[key]:
                tok = sum(t for t, _ in timings[key]) / len(timings[key])
                sec = statistics.median(s for _, s in timings[key])
                prof.save(key, prof.bucket, sec, tok, len(timings[key]))
                log(f"{key[0]:>15} B={key[1]:<3} cache {n:>6}: {1e3 * sec:8.2f} ms/step, "
                    f"{tok:5.2f} tokens/step, {tok / sec:8.1f} tok/s")
    return prof
