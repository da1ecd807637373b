"""`trikern generate`: complete a raw-text prompt, streamed to stdout (or one JSON object)."""
from __future__ import annotations

import json
import sys

from .options import add_model_options, add_sampling_options, generation_kwargs, load_model_from_args, report_errors


def add_parser(sub):
    g = sub.add_parser("generate", help="complete a raw-text prompt (no chat template)",
                       description="Complete PROMPT (raw text, no chat template) and stream the text to stdout; "
                       "stats go to stderr. Use '-' to read the prompt from stdin.")
    add_model_options(g)
    add_sampling_options(g)
    g.add_argument("--json", action="store_true", help="print one JSON object: text, token_ids, stats, finish_reason")
    g.add_argument("prompt", metavar="PROMPT", help="prompt text, or '-' for stdin")
    return g


def run(a) -> int:
    return report_errors("generate", lambda: _generate(a))


def _generate(a) -> int:
    m = load_model_from_args(a)
    prompt = sys.stdin.read() if a.prompt == "-" else a.prompt
    kw = generation_kwargs(a)
    if a.json:
        r = m.generate(prompt, **kw)
        print(json.dumps({"text": r.text, "token_ids": r.token_ids, "finish_reason": r.finish_reason,
                          "stats": r.stats}, ensure_ascii=False))
        return 0
    stream = m.stream(prompt, **kw)
    for piece in stream:
        sys.stdout.write(piece)
        sys.stdout.flush()
    sys.stdout.write("\n")
    print_stats(stream.result.stats)
    return 0


def print_stats(s: dict):
    """One line of a generation's stats on stderr."""
    acc = f" mean_accept={s['mean_acceptance_length']:.2f}" if s.get("acceptance_lengths") else ""
    tree = f" tree_nodes={s['tree_nodes']}" if s.get("tree_nodes") else ""
    print(f"[{s['mode']}{tree}] {s['generated_tokens']} tokens, {s['forwards']} forwards, "
          f"{s['tokens_per_forward']:.2f} tok/fwd{acc}, {s['tokens_per_second']:.1f} tok/s, "
          f"prefill {s['prefill_tokens_per_second']:.1f} tok/s", file=sys.stderr)
