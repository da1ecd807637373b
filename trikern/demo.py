"""`make demo`: a short completion in every mode on the embedded model, stats side by side."""
from __future__ import annotations

import argparse
import sys
import time

from .decode import MODES

PROMPT = "import os\nimport sys\n\n\ndef main(argv=None):\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m trikern.demo", description=__doc__)
    p.add_argument("--model", default=None, help="checkpoint folder (default: the embedded model)")
    p.add_argument("--prompt", default=PROMPT)
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--block-size", type=int, default=8)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (spec modes then equal AR)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)

    from . import load  # noqa: PLC0415

    t0 = time.perf_counter()
    m = load(a.model)
    print(f"model: {m.path} ({sum(t.numel() for t in m.model.parameters()) / 1e6:.1f}M parameters, "
          f"{m.model.embed_tokens.weight.dtype}, {m.model.embed_tokens.weight.device}), "
          f"loaded in {time.perf_counter() - t0:.1f}s")
    # What `trikern bench` and `trikern serve` do first: every mode's shapes run once, and auto's
    # step costs are measured if this machine's profile lacks them, so no row pays for another's
    # first steps and auto chooses from this machine's costs rather than measuring on the fly.
    print(f"warm-up (auto's step costs on this machine, kept for next time): {m.warmup(a.block_size):.1f}s")
    print(f"prompt: {a.prompt!r}\n")
    rows = []
    for mode in MODES:
        r = m.generate(a.prompt, mode=mode, max_new_tokens=a.max_new_tokens, block_size=a.block_size,
                       temperature=a.temperature, seed=a.seed)
        print(f"--- {mode} ---\n{r.text}\n")
        rows.append((mode, r.stats))
    head = f"{'mode':<15}{'tokens':>8}{'forwards':>10}{'tok/fwd':>9}{'mean acc':>10}{'tok/s':>9}"
    print(head + "\n" + "-" * len(head))
    for mode, s in rows:
        acc = f"{s['mean_acceptance_length']:.2f}" if s["acceptance_lengths"] else "-"
        print(f"{mode:<15}{s['generated_tokens']:>8}{s['forwards']:>10}{s['tokens_per_forward']:>9.2f}"
              f"{acc:>10}{s['tokens_per_second']:>9.1f}")
    how = "greedy" if a.temperature == 0 else f"temperature {a.temperature}, seed {a.seed}"
    print(f"\nblock size {a.block_size}, {how}; forwards exclude the prefill (counted separately).")
    print("auto picks the fastest lossless mode and block size (up to the block size) before every step, from "
          "this machine's step costs (the warm-up measured any it lacked; 'trikern tune --decode' measures "
          "them at more cache lengths).")
    if a.model is None:
        print("The embedded model has 6.5M parameters: its greedy text soon loops, which flatters speculation; "
              "docs/EVAL.md has held-out figures.")
    return 0


if __name__ == "__main__":
    sys.exit(main())
