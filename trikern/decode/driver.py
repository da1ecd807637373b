"""The one decode loop: prefill, then steps of whichever strategy the policy picks, until done.

The driver owns what every mode shares -- the emitter (EOS, token budget, thinking budget), the
CUDA-graph step runner, phase timers and stats -- and the hand-over between strategies: all of them
start and end a step in the same state (strategy.py), so a forced token is repaired by truncating
the cache and restarting from it, and `mode="auto"` switches strategy between any two steps.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import torch

from ..kernels.cpu import linear as cpu_linear
from .common import DecodeContext
from .loop import Emitter, PhaseTimer, StepRunner, check_room
from .policy import AUTO, STRATEGIES, AutoPolicy, FixedPolicy
from .profile import StepProfile

StepHook = Callable[[tuple, int, float, bool], object]  # (key, tokens, seconds, cold)


def policy_for(ctx: DecodeContext, mode: str):
    if mode == AUTO:  # TRIKERN_DECODE_PROFILE=0: no persisted profile, measure on the fly every time
        profile = StepProfile(ctx.model, ctx.stats.prompt_tokens) if StepProfile.enabled() else None
        return AutoPolicy(ctx.candidates, profile)
    return FixedPolicy(ctx.candidates[0])


@torch.inference_mode()  # wraps each resume of the generator, not the caller's code
def drive(ctx: DecodeContext, prompt_ids: torch.Tensor, mode: str, on_step: StepHook | None = None
          ) -> Iterator[list[int]]:
    if ctx.max_new_tokens == 0:
        return
    policy = policy_for(ctx, mode)
    run, timer, g = StepRunner(ctx), PhaseTimer(ctx), ctx.gen
    made: dict = {}

    def strategy(key):
        if key not in made:
            made[key] = STRATEGIES[key[0]](ctx, key[1])
        return made[key]

    cur = strategy(policy.first())
    try:
        first = cur.prefill(prompt_ids, run, timer)
        em = Emitter(ctx)
        out, done, forced = em.take(first)
        yield out
        while not done:
            if forced:  # thinking budget: the end-think token replaced the last one produced
                ctx.cache.truncate(em.cache_length())
                cur.start(torch.full((1,), g.end_think_id, device=ctx.device))
            key = policy.choose()
            if key != cur.key:
                nxt = strategy(key)
                nxt.take_over(cur)
                cur = nxt
                ctx.stats.switches += 1
            check_room(ctx, em.cache_length(), cur.scratch(cur.B))
            run.cold = False
            timed = cpu_linear.measurements
            timer.start()
            t0 = time.perf_counter()
            tokens, forwards = cur.step(run, timer, em)
            seconds = time.perf_counter() - t0  # the step ends in its host read: no extra sync
            timer.flush()
            # Cold: it captured a CUDA graph, or timed the CPU matmul paths of a new shape (once per process).
            cold = run.cold or cpu_linear.measurements != timed
            ctx.stats.record(key, len(tokens), forwards, seconds, spec=key[0].startswith("spec"))
            policy.observe(key, len(tokens), seconds, cold, cur.drafted)
            if on_step is not None:
                on_step(key, len(tokens), seconds, cold)
            out, done, forced = em.take(tokens)
            yield out
    finally:
        policy.finish()
