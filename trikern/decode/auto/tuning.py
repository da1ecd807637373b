"""`trikern tune --decode`'s measurement: real steps of every auto candidate, timed in turns."""
from __future__ import annotations

import statistics
import time

import torch

from ...kernels import autotune
from ..context import GenerationConfig
from ..driver import drive
from ..registry import AUTO, candidates, new_context
from .policy import FixedPolicy
from .profile import StepProfile


LEAD = 3  # untimed steps that open each candidate's turn (`measure`): steps right after another
# candidate's are dearer, AR's most, and most of a generation's steps follow their own kind. On a
# 2-core Xeon (bf16, 1 thread) an AR step cost 1.33 / 1.21 / 1.16x its steady figure as a turn's
# second step at 1 / 4 / 8 sequences (1.05x at 2), 1.10 / 1.06 / 1.13x as its third, the steady
# figure from the fourth on; speculative steps were within a few percent from the second (one
# exception: quadratic B = 2 at 4 sequences, 1.21x). Timing the second step, three tunes put AR at
# 0.62 / 0.62 / 0.75x a quadratic B = 2 step at 4 sequences, against 0.56x between steady steps in
# place; timing the fourth, 0.54 / 0.53 / 0.60x (the batched benchmark's auto / best fixed moved
# within its run-to-run spread either way: docs/RESULTS.md).


def measure(model, cache_lengths=(256, 2048), steps: int = 4, block_size=None, log=print) -> StepProfile:
    """Time `steps` warm steps of every auto candidate at each cache length (a random prompt of that
    length, greedy) and persist the median. The candidates take turns, so a slow spell of a shared
    machine lands on all of them alike, LEAD untimed steps and one timed a turn: a step right after
    another candidate's finds the caches holding that one's data, and most of a generation's steps
    follow their own kind (timing every step of a strict rotation priced an AR step 25% above a
    generation's, a quadratic B = 4 step 10%, on a 2-core EPYC in fp32, so auto took quadratic steps
    where fixed AR was faster; see LEAD). Tokens per step are the random prompt's: a floor."""
    cfg = model.cfg
    device = model.embed_tokens.weight.device
    keys = candidates(AUTO, block_size or cfg.block_size, cfg)
    prof = None
    for n in cache_lengths:
        n = min(int(n), cfg.max_position_embeddings - 64)
        prompt = torch.randint(0, cfg.vocab_size, (n,), generator=torch.Generator().manual_seed(n)).to(device)
        timings = {key: [] for key in keys}
        running, timed = {}, set()  # timed: the candidate whose next step counts
        for key in keys:
            # (the rounds' LEAD + 1 steps of up to B tokens, 4x over: the cache is sized by this budget)
            gen = GenerationConfig(max_new_tokens=4 * (LEAD + 1) * key[1] * (steps + 4) + 16, block_size=key[1])
            ctx = new_context(model, gen, n, key[0])
            running[key] = drive(ctx, prompt, FixedPolicy(key),
                                 on_step=lambda k, t, s, cold: cold or k not in timed or timings[k].append((t, s)))
        for _ in range(steps + 4):  # a few more rounds than warm steps needed: the first may be cold
            for key, it in list(running.items()):
                # The turn's first steps follow another candidate's: untimed.
                ended = len(timings[key]) >= steps or any(next(it, None) is None for _ in range(LEAD))
                if not ended:
                    timed.add(key)
                    ended = next(it, None) is None
                    timed.discard(key)
                if ended:
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


def measure_batch(model, batch_sizes=(2, 4, 8), cache_length: int = 64, steps: int = 3, block_size=None,
                  log=print, replace: bool = False) -> StepProfile:
    """The same for batches (trikern.batch): time `steps` warm steps of every auto candidate over N
    sequences at once, for each N in `batch_sizes`, and persist the median per (candidate, N). How a
    step's cost grows with N differs per candidate (AR reads the weights once for all chains; a wide
    speculative step grows with its rows), so batched auto cannot scale one batch size's costs to
    another. Every (candidate, N) takes its turns as `measure`'s do (LEAD untimed steps, then one), so
    a slow spell lands on all alike; a step is timed only while all N sequences decode (prefill done,
    none finished) and nothing warmed up in it. `replace` (`trikern tune`): the candidates' stored
    costs at other batch sizes go (StepProfile.save_batch); without it (a warm-up measuring the
    sizes a profile lacks) they stay."""
    from ...batch import BatchDecoder  # noqa: PLC0415 (the batch package builds on decode/)
    from ... import warmup  # noqa: PLC0415

    cfg = model.cfg
    keys = candidates(AUTO, block_size or cfg.block_size, cfg)
    n_tok = min(int(cache_length), cfg.max_position_embeddings - 64)
    prof = StepProfile(model, n_tok)
    sizes = sorted({int(b) for b in batch_sizes if int(b) >= 2})
    g = torch.Generator().manual_seed(n_tok)
    prompts = [torch.randint(0, cfg.vocab_size, (n_tok,), generator=g).tolist() for _ in range(max(sizes, default=0))]
    decs, timings = {}, {}
    for n in sizes:
        for key in keys:
            budget = (LEAD + 1) * key[1] * (steps + 4) + 16
            # Regions for what the timing needs, not the model's context (a 262k-token NLD context
            # times n regions times every candidate would not fit a GPU).
            context = min(cfg.max_position_embeddings, n_tok + budget)
            dec = decs[(n, key)] = BatchDecoder(model, max_batch=n, mode=key[0], block_size=key[1], context=context)
            timings[(n, key)] = []
            for p in prompts[:n]:  # (the budget is cut to the context; a sequence that ends early stops the timing)
                dec.add(p, max_new_tokens=budget)
    for dec in decs.values():  # prefill, then one untimed step: the first at a shape is slower
        while dec.busy and (dec.queue or any(not s.decoding for s in dec.active)):
            dec.step()
        dec.step()
    for _ in range(steps + 3):  # a few more rounds than timed steps: a step may be cold
        for (n, key), dec in decs.items():
            if len(timings[(n, key)]) >= steps or not dec.busy:
                continue
            for _ in range(LEAD):  # the turn's first steps follow another candidate's: untimed
                if dec.busy:
                    dec.step()
            if not dec.busy:
                continue
            full = len([s for s in dec.active if s.decoding]) == n
            warm = warmup.count
            t0 = time.perf_counter()
            out = dec.step()
            seconds = time.perf_counter() - t0
            if full and warmup.count == warm:
                timings[(n, key)].append((sum(map(len, out.values())) / n, seconds))
    measured = {}
    for (n, key), t in timings.items():
        if t:
            sec = statistics.median(s for _, s in t)
            measured[(key, n)] = (sec, sum(tok for tok, _ in t) / len(t), len(t))
            log(f"{key[0]:>15} B={key[1]:<3} batch {n:>3}: {1e3 * sec:8.2f} ms/step")
    prof.save_batch(measured, replace)
    return prof
