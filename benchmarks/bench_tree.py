"""CPU benchmark of draft trees (issue 25): tokens per forward and tokens/s of linear and quadratic
self-speculation, chain against trees of N nodes, on the embedded model and held-out prompts.

Prompts: the first 64 tokens of the first 9 held-out files of the standard library (the trainer's
split, in its fixed hash order: never trained on) and the 3 prose prompts of trikern/bench/prompts.jsonl;
greedy, fp32, no EOS stop (`--dtype bf16`: the CPU's matmul path for each row count is chosen by
timing and the paths differ within an ulp, so "= AR" may fail there). Every configuration runs every
prompt, the configurations taking turns prompt by prompt (one process, interleaved), after one
untimed warm-up generation each; tokens/s adds up the per-prompt medians over the repeats (tokens
and seconds), TPF counts decode forwards only (the prefill is not counted, trikern's convention).
Each output is checked against AR's.

`--auto` adds mode auto up to the largest block, over chains and with trees, twice: as a user runs it,
with the stored step-cost profile (each auto row its own private copy of the profile directory, taught
by an untimed pass over three other held-out prompts, then learning on as generations go, as a
user's profile does), and without one (`profile=False`: every generation measures its candidates on
the fly, a quadratic B = 16 step among them, which on a fast CPU is a fifth of a 128-token generation).

    python benchmarks/bench_tree.py                         # B in {8, 16} x N in {chain, B, 32, 64}, 3 repeats
    python benchmarks/bench_tree.py --blocks 8 --nodes chain,8,16 --repeats 1
    python benchmarks/bench_tree.py --smoke                 # two prompts, 8 tokens: checks the script runs
"""
from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODES = {"linear": "spec-linear", "quadratic": "spec-quadratic"}


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="linear,quadratic", help="comma list of linear, quadratic")
    p.add_argument("--blocks", default="8,16", help="block sizes B")
    p.add_argument("--nodes", default="chain,B,32,64", help="tree budgets N: 'chain', 'B' or an int")
    p.add_argument("--top-k", type=int, default=None, help="children per tree node (default: the strategies')")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtype", default="fp32", choices=("fp32", "bf16"),
                   help="model dtype (default fp32, where greedy self-speculation equals AR bit for bit)")
    p.add_argument("--auto", action="store_true",
                   help="also run mode auto up to the largest block: chains only, and chains + trees")
    p.add_argument("--json", default=None, help="write the rows here too")
    p.add_argument("--smoke", action="store_true", help="2 prompts, 8 tokens, 1 repeat: checks the script runs")
    a = p.parse_args(argv)
    if a.smoke:
        a.max_new_tokens, a.repeats = 8, 1
    return a


def prompts(tok, smoke: bool) -> tuple[list[tuple[str, list[int]]], list[tuple[str, list[int]]]]:
    """(the timed prompts, three other held-out files that teach auto's profile before timing)."""
    from trikern.train import data as D
    from trikern.train.evaluate import heldout_prompts

    _, held = D.read_split()
    files = 1 if smoke else 9
    out = heldout_prompts(tok, held, files + 3, 64)
    prose = [json.loads(line) for line in (ROOT / "trikern" / "bench" / "prompts.jsonl").read_text().splitlines()]
    prose = [d for d in prose if d.get("kind") == "prose"][: 1 if smoke else 3]
    return out[:files] + [(d["id"], tok.encode(d["prompt"]).ids) for d in prose], out[files:]


def configs(a) -> list[tuple[str, int, int | None]]:
    out = []
    for m in a.modes.split(","):
        for B in map(int, a.blocks.split(",")):
            for n in a.nodes.split(","):
                N = None if n == "chain" else B if n == "B" else int(n)
                if (MODES[m], B, N) not in out:
                    out.append((MODES[m], B, N))
    return out


AUTO, AUTO_FRESH = "auto", "auto/no-profile"


def label(c) -> str:
    mode, B, N = c
    if mode in (AUTO, AUTO_FRESH):
        return f"auto B<={B} " + ("chains" if N is None else "with trees (N = B)") + \
            (" (profile)" if mode == AUTO else " (no profile)")
    return f"{mode} B={B} " + ("chain" if N is None else f"tree N={N}")


def main(argv=None):
    a = parse(argv)
    import torch
    from tokenizers import Tokenizer

    from trikern.decode import GenerationConfig, candidates, decode, new_context
    from trikern.decode.registry import STRATEGIES
    from trikern.decode.strategies import tree_linear, tree_quadratic
    from trikern.kernels import autotune_store as store
    from trikern.loading import load_model
    from trikern.train.evaluate import DEFAULT_MODEL

    torch.set_num_threads(a.threads)
    if a.top_k is not None:
        tree_linear.TreeLinear.TOP_K = tree_quadratic.TreeQuadratic.TOP_K = a.top_k
    tok = Tokenizer.from_file(str(DEFAULT_MODEL / "tokenizer.json"))
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[a.dtype]
    model = load_model(DEFAULT_MODEL, device="cpu", dtype=dtype)
    ps, teach = prompts(tok, a.smoke)
    cfgs = configs(a)
    if a.auto:
        B = max(map(int, a.blocks.split(",")))
        # auto's trees run each strategy's own N for its block (N = B here; tree_nodes only caps it),
        # in place of the chain at the blocks the trees declare (registry.candidates)
        cfgs += [(m, B, N) for m in (AUTO, AUTO_FRESH) for N in (None, B)]
    # Each auto row with a profile keeps its own (a copy of the one this process would read and write):
    # the rows must not teach each other, nor the user's profile be changed by a benchmark.
    scratch = Path(tempfile.mkdtemp(prefix="bench_tree_profile_"))
    private = {c: scratch / str(i) for i, c in enumerate(c for c in cfgs if c[0] == AUTO)}
    for d in private.values():
        if store.write_dir().is_dir():
            shutil.copytree(store.write_dir(), d)
        d.mkdir(exist_ok=True)

    def generate(c, ids, new):
        mode, B, N = c
        mode = AUTO if mode == AUTO_FRESH else mode
        gen = GenerationConfig(max_new_tokens=new, block_size=B, tree_nodes=N)
        with store.writing_to(private.get(c)):
            ctx = new_context(model, gen, len(ids), mode)
            out = [t for piece in decode(ctx, torch.tensor(ids), mode, profile=c in private) for t in piece]
        return out, ctx.stats

    ar = {pid: generate(("ar", 1, None), ids, a.max_new_tokens)[0] for pid, ids in ps}
    for c in cfgs:  # warm-up: CPU matmul paths of each shape are timed once per process
        if c[0] in (AUTO, AUTO_FRESH):  # every candidate auto may run, as a fixed setting warms its own shapes
            for m, B in candidates("auto", c[1], model.cfg, c[2]):
                cls = STRATEGIES[m]
                if getattr(cls, "variant_of", None):
                    generate((cls.variant_of, B, cls.nodes_for(B, c[2], auto=True)), ps[0][1], 16)
                else:
                    generate((m, B, None), ps[0][1], 16)
        for _ in range(2):
            generate(c, ps[0][1], 16)
        if c in private:  # the profile a user's earlier generations leave: costs, acceptance, exploration
            for _, ids in teach:
                generate(c, ids, a.max_new_tokens)
    runs = {c: {pid: [] for pid, _ in ps} for c in cfgs}
    lossless = dict.fromkeys(cfgs, True)
    t0 = time.time()
    for r in range(a.repeats):
        for pid, ids in ps:
            for c in cfgs:
                out, st = generate(c, ids, a.max_new_tokens)
                lossless[c] &= out == ar[pid]
                runs[c][pid].append((st.generated_tokens, st.forwards, st.decode_s))
        print(f"# repeat {r + 1}/{a.repeats} done ({time.time() - t0:.0f} s)", file=sys.stderr, flush=True)

    rows = []
    for c in cfgs:
        per = runs[c].values()
        gen = sum(g for v in per for g, _, _ in v) / a.repeats
        fwd = sum(f for v in per for _, f, _ in v) / a.repeats
        tok_med = sum(statistics.median(g for g, _, _ in v) for v in per)
        sec_med = sum(statistics.median(s for _, _, s in v) for v in per)
        rows.append(dict(mode=c[0], B=c[1], tree_nodes=c[2], tpf=gen / fwd, tok_s=tok_med / sec_med,
                         equals_ar=lossless[c]))
    chain = {(r["mode"], r["B"]): r for r in rows if r["tree_nodes"] is None}
    print(f"# embedded model, CPU {a.dtype} ({a.threads} threads), greedy, {len(ps)} prompts, {a.max_new_tokens} new "
          f"tokens, {a.repeats} repeats interleaved; TPF = tokens / decode forwards (prefill not counted)")
    print("| setting | TPF | x chain | tok/s | x chain | = AR |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        base = chain.get((r["mode"], r["B"]))
        x = (lambda k: f"{r[k] / base[k]:.2f}") if base else (lambda k: "")
        name = label((r["mode"], r["B"], r["tree_nodes"]))
        print(f"| {name} | {r['tpf']:.2f} | {x('tpf')} | {r['tok_s']:.1f} | {x('tok_s')} | "
              f"{'yes' if r['equals_ar'] else 'NO'} |")
    fixed = [r for r in rows if r["mode"] not in (AUTO, AUTO_FRESH)]
    best_chain = max((r for r in fixed if r["tree_nodes"] is None), key=lambda r: r["tok_s"], default=None)
    best_tree = max((r for r in fixed if r["tree_nodes"] is not None), key=lambda r: r["tok_s"], default=None)
    if best_chain and best_tree:
        print(f"# best tree {label((best_tree['mode'], best_tree['B'], best_tree['tree_nodes']))} "
              f"{best_tree['tok_s']:.1f} tok/s vs best chain {label((best_chain['mode'], best_chain['B'], None))} "
              f"{best_chain['tok_s']:.1f}: x{best_tree['tok_s'] / best_chain['tok_s']:.2f}")
    top = max(fixed, key=lambda f: f["tok_s"], default=None)
    for r in rows:
        if r["mode"] in (AUTO, AUTO_FRESH) and top:
            print(f"# {label((r['mode'], r['B'], r['tree_nodes']))}: x{r['tok_s'] / top['tok_s']:.2f} the best "
                  f"fixed setting ({label((top['mode'], top['B'], top['tree_nodes']))})")
    shutil.rmtree(scratch, ignore_errors=True)
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1))
    return 0 if all(lossless.values()) else 1


if __name__ == "__main__":
    sys.exit(main())
