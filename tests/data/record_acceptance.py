"""Records `acceptance_traces.json`, the input of tests/test_decode_auto_replay.py.

For each prompt of the shipped bench set: the embedded model's greedy AR output (64 tokens), and for
every position i of it, the tokens one self-speculative step would produce from there (pending = token
i, cache = prompt + tokens before it), per mode and block size. Greedy decoding makes that a function
of the position alone, whatever ran before, so these traces replay any schedule of strategies
exactly (each step starts from the K/V the AR generation wrote, as in a real generation); the
step costs are `trikern tune --decode`'s on the recording machine.

    OMP_NUM_THREADS=1 .venv/bin/python tests/data/record_acceptance.py   # ~10 min on 1 core
"""
import os
import sys
import tempfile
from pathlib import Path

import torch

import trikern
from trikern import files
from trikern.bench.prompts import load_prompts
from trikern.decode.auto import profile, tuning
from trikern.decode import candidates
from trikern.decode.strategies.spec_linear import LinearSpec
from trikern.decode.strategies.spec_quadratic import QuadraticSpec

NEW_TOKENS = 64
BLOCKS = {"spec-linear": (2, 4, 8, 16), "spec-quadratic": (2, 4, 8, 16)}


def first_step_tokens(m, ids, pending, mode, B, log, prompt):
    """Tokens produced by the first decode step from `ids`. Past the `prompt`, the model holds the
    K/V of all but the last token as AR's own steps wrote them (see main): the prefill re-feeds
    that one token alone, as the AR step that produced `pending` did, so a bf16 near-tie cannot round
    it differently. At the prompt, the prefill is the whole prompt, as AR's was."""
    log.clear()
    r = m.generate(ids, mode=mode, block_size=B, max_new_tokens=1 + B, reuse_prefix=not prompt)
    if r.token_ids[0] != pending:
        raise SystemExit(f"{mode} B={B} at {len(ids)}: the prefill gave {r.token_ids[0]}, AR {pending}")
    return log[0]


def main(out=Path(__file__).with_name("acceptance_traces.json")):
    torch.set_num_threads(1)
    m = trikern.load()
    log: list[int] = []
    for cls in (LinearSpec, QuadraticSpec):  # count what each real step produced
        def step(self, run, timer, em, _orig=cls.step):
            result = _orig(self, run, timer, em)
            log.append(len(result.tokens))
            return result
        cls.step = step
    with tempfile.TemporaryDirectory() as d:  # this checkout's autotune_cache/ is left as it was
        os.environ["TRIKERN_AUTOTUNE_DIR"] = d
        prof = tuning.measure(m.model, (128,), steps=8, block_size=16, log=lambda s: None)
    # What was just timed, not other buckets or the acceptance prior the profile also read.
    step_ms = {f"{mode}/{B}": round(1e3 * prof.entries[prof.key_str((mode, B), prof.bucket)]["seconds"], 3)
               for mode, B in candidates("auto", 16, m.model.cfg)}
    traces = {}
    for p in load_prompts():
        ids = p.token_ids(m)
        gen = m.generate(ids, mode="ar", max_new_tokens=NEW_TOKENS, reuse_prefix=False).token_ids
        # The model now holds that generation's cache. A step from position i rewrites only slots
        # from i on (prompt-relative), so going from the last position back, every step starts
        # from the K/V AR wrote.
        steps = {mode: {str(B): [0] * (len(gen) - 1) for B in blocks} for mode, blocks in BLOCKS.items()}
        for i in reversed(range(len(gen) - 1)):
            for mode, blocks in BLOCKS.items():
                for B in blocks:
                    steps[mode][str(B)][i] = first_step_tokens(m, ids + gen[:i], gen[i], mode, B, log, i == 0)
        traces[p.id] = {"kind": p.kind, **steps}
        print(p.id, steps["spec-linear"]["16"], file=sys.stderr, flush=True)
    doc = {"model": "embedded", "new_tokens": NEW_TOKENS, "device": profile.device_name(torch.device("cpu")),
           "step_ms": step_ms,
           "traces": traces}
    files.write_json(out, doc, indent=None, separators=(",", ":"))


if __name__ == "__main__":
    main()
