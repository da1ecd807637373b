"""The one decode loop: prefill, then steps of whichever strategy the policy picks, until done.

`drive(ctx, prompt_ids, policy)` yields token ids as they are committed (the last yield ends with
the first EOS, if any, and nothing after it) and writes `ctx.stats`: this is the one place that
does. It owns what every mode shares -- the emitter (EOS, token budget, thinking budget), the step
runner (CUDA graphs), phase timers -- and the hand-over between strategies: all of them start and
end a step in the same state (strategies/base.py), so a forced token is repaired by truncating the
cache and restarting from it, and the policy may switch strategy between any two steps.
"""
from __future__ import annotations

import time
from typing import Callable, Iterator

import torch

from .. import warmup
from .context import DecodeContext
from .emitter import Emitter
from .registry import STRATEGIES
from .runtime import PhaseTimer, StepRunner, check_room

StepHook = Callable[[tuple, int, float, bool], object]  # (key, tokens, seconds, cold)


@torch.inference_mode()  # wraps each resume of the generator, not the caller's code
def drive(ctx: DecodeContext, prompt_ids: torch.Tensor, policy, runner=None, on_step: StepHook | None = None
          ) -> Iterator[list[int]]:
    """`policy` picks the strategy of every step and hears what each did (auto/policy.py:
    `first`, `choose`, `observe`, `finish`); `runner` runs a step's device work (default: a
    StepRunner, eager or CUDA graphs)."""
    if ctx.max_new_tokens == 0:
        return
    run, timer, g, st = runner or StepRunner(ctx), PhaseTimer(ctx), ctx.gen, ctx.stats
    made: dict = {}

    def strategy(key):
        if key not in made:
            made[key] = STRATEGIES[key[0]](ctx, key[1])
        return made[key]

    cur = strategy(policy.first())
    try:
        t0 = ctx.sync_time()
        first = cur.prefill(prompt_ids, run, timer)
        st.prefill_forwards += first.forwards
        st.prefill_s += ctx.sync_time() - t0
        em = Emitter(ctx)
        start = ctx.sync_time()

        def emit(tokens):
            out, done, forced = em.take(tokens)
            st.generated_tokens, st.decode_s = em.emitted, ctx.sync_time() - start
            return out, done, forced

        out, done, forced = emit(first.tokens)
        yield out
        while not done:
            if forced:  # thinking budget: the end-think token replaced the last one produced
                ctx.cache.truncate(em.cache_length())
                cur.start(torch.full((1,), g.end_think_id, device=ctx.device))
            key = policy.choose(em.room)
            if key != cur.key:
                nxt = strategy(key)
                nxt.take_over(cur)
                cur = nxt
                st.switches += 1
            check_room(ctx, em.cache_length(), cur.scratch(cur.B))
            warm = warmup.count
            timer.start()
            t0 = time.perf_counter()
            res = cur.step(run, timer, em)
            seconds = time.perf_counter() - t0  # the step ends in its host read: no extra sync
            timer.flush()
            # Cold: it captured a CUDA graph, tuned a kernel or timed the CPU matmul paths of a new shape.
            cold = warmup.count != warm
            n = len(res.tokens)
            st.record(key, n, res.forwards, seconds, spec=STRATEGIES[key[0]].family is not None)
            policy.observe(key, n, seconds, cold, res.drafted)
            if on_step is not None:
                on_step(key, n, seconds, cold)
            out, done, forced = emit(res.tokens)
            yield out
    finally:
        policy.finish()
