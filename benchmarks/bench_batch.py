"""CPU benchmark of batched decoding (issue 22): aggregate and per-user tokens/s at concurrency
1, 2, 4, 8 for each batched mode and auto on the embedded model (`trikern.load()`), and auto over
the best fixed setting at each concurrency.

At concurrency c, c users send a prompt at once to a BatchDecoder(max_batch=c) (trikern/batch) and
each generates --max-new-tokens tokens (greedy, no EOS stop). Aggregate tok/s = all tokens / wall
time until the last user is done; per-user tok/s = a user's tokens / its own time from request to
last token (queueing and prefill included: what the user sees), the median user; "slowest / solo" =
the slowest user's time over a solo run's in the same repeat (the issue's goal at c = 4: <= 2).
Prompts: trikern/bench/prompts.jsonl, cycled: repeat r gives its c users prompts r, r+1, ... (so c =
1 is not one text's figure, and auto meets a new text each time). Every (mode, c) runs once per
repeat, taking turns (one process, interleaved: at each c every mode in turn, so the modes compared at
one c run within moments of each other, the modes' order rotated each repeat), after one untimed
warm-up each; figures are medians over the repeats, and the ratios are taken within a repeat before
the median, since a shared CPU is noisy. `--lockstep` goes further for the aggregates: at each c the
modes' decoders take one step each in turn, and each is timed by its own steps (a user's time is its
decoder's clock at its last token, not the wall clock), so a slow spell lands on every mode alike; this
VM's speed moved by 1.5x within minutes and ten-repeat runs by more than 5%. A last line per mode
gives the single-sequence decoder's (trikern.decode) tok/s on the same prompt and batched c = 1 over
it: what one user got before batching. "= solo": every user's text equals its c = 1 text (in bf16 a
batch's matmul shapes may round differently, so each mode may write its own text and part of its
figure is which text; the fp32 equality is what tests/test_batch_decode.py checks). Where the decode
time went: each mode's share in the ragged end (steps decoding fewer than c users: a speculative step
gives the users different yields, and the last ones finish at smaller batch sizes), and auto's own
time a step (choosing, observing, its profile writes).

    python benchmarks/bench_batch.py                  # ar, spec-linear B=4 and 8, spec-quadratic B=4, auto B<=8; 5 repeats
    python benchmarks/bench_batch.py --modes ar --concurrency 1,4 --repeats 9
    python benchmarks/bench_batch.py --smoke          # 8 tokens, 1 repeat: checks the script runs
    python benchmarks/bench_batch.py --lockstep --dtype fp32 --repeats 10   # modes stepped in turns, one text
    python benchmarks/bench_batch.py --synthetic nld-8b --modes ar,spec-linear:4,auto:8   # on a GPU

`--synthetic NAME|CONFIG` runs random weights of a shipped config (trikern/configs: nld-3b, nld-8b)
on `--device` (default: CUDA if there is one) instead of the embedded model, fed random prompts of
`--prompt-tokens` ids: its step costs and AR figures are the shape's, but random drafts are almost
never accepted, so its speculative figures say what a step costs, not what a trained model gains.
`--layers N` keeps N layers (a CPU dry run).

Stopped during the repeats (SIGTERM, as `timeout` sends, or Ctrl-C), it reports the repeats it
completed, so a time-limited GPU run keeps its figures.
"""
from __future__ import annotations

import argparse
import json
import signal
import statistics
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def parse(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--modes", default="ar,spec-linear:4,spec-linear:8,spec-quadratic:4,auto:8",
                   help="comma list of ar, spec-linear:B, spec-quadratic:B, diffusion:B, auto:B (B: auto's cap)")
    p.add_argument("--concurrency", default="1,2,4,8")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (1: steadier on a CPU shared with other work)")
    p.add_argument("--dtype", default=None, help="bf16 or fp32 (default: the checkpoint's as trikern.load gives it)")
    p.add_argument("--json", default=None, help="write the rows here too (with each repeat's aggregate)")
    p.add_argument("--synthetic", metavar="NAME|CONFIG", help="random weights of a shipped config (see above)")
    p.add_argument("--layers", type=int, default=None, help="--synthetic: keep only N layers")
    p.add_argument("--device", default=None, help="--synthetic: cuda or cpu (default: cuda if available)")
    p.add_argument("--prompt-tokens", type=int, default=128, help="--synthetic: ids per random prompt")
    p.add_argument("--no-cuda-graphs", action="store_true", help="batched passes eager on CUDA (default: graphs)")
    p.add_argument("--smoke", action="store_true", help="8 tokens, 1 repeat, c in {1, 2}: checks the script runs")
    p.add_argument("--lockstep", action="store_true",
                   help="at each c, the modes' decoders take one step each in turn, each timed by its own steps")
    a = p.parse_args(argv)
    if a.smoke:
        a.max_new_tokens, a.repeats, a.concurrency = 8, 1, "1,2"
    return a


def main(argv=None):
    a = parse(argv)
    import torch

    import trikern
    from trikern.batch import BatchDecoder

    torch.set_num_threads(a.threads)
    if a.synthetic:
        lm, prompts = synthetic(a)
        model = lm.model
    else:
        lm = trikern.load(dtype=a.dtype)
        model, tok = lm.model, lm.tokenizer
        rows = [json.loads(line) for line in (ROOT / "trikern" / "bench" / "prompts.jsonl").read_text().splitlines()]
        prompts = [tok.encode(d["prompt"]) for d in rows if "prompt" in d]  # (the chat rows need a template)
    modes = [(m.split(":")[0], int(m.split(":")[1]) if ":" in m else None) for m in a.modes.split(",")]
    levels = [int(c) for c in a.concurrency.split(",")]

    decoders = {}
    # Regions for these prompts and budgets, not the model's whole context (NLD's 262k tokens per region
    # would not fit a GPU); nothing is cut: every prompt and budget fits.
    context = min(model.cfg.max_position_embeddings, max(map(len, prompts)) + max(a.max_new_tokens, 16) + 1)
    graphs = False if a.no_cuda_graphs else None

    def decoder(mode, B, c):
        """One decoder per (mode, B, c) for the whole run, as a server keeps its own: auto's step costs
        per batch size, measured in the warm-up, stay with it."""
        if (mode, B, c) not in decoders:
            decoders[(mode, B, c)] = BatchDecoder(model, max_batch=c, mode=mode, block_size=B, context=context,
                                                  cuda_graphs=graphs)
        return decoders[(mode, B, c)]

    def serve(mode, B, c, new, first=0):
        """(aggregate tok/s, median per-user tok/s, slowest user's seconds, texts) of c users at once."""
        dec = decoder(mode, B, c)
        t0 = time.perf_counter()
        seqs = [dec.add(prompts[(first + i) % len(prompts)], max_new_tokens=new) for i in range(c)]
        for _ in dec.run():
            pass
        wall = time.perf_counter() - t0
        per_user = [len(s.tokens) / (s.t_done - t0) for s in seqs]
        return (sum(len(s.tokens) for s in seqs) / wall, statistics.median(per_user),
                max(s.t_done - t0 for s in seqs), [s.tokens for s in seqs])

    def today(mode, B, new, j):
        """tokens/s of the single-sequence decoder (trikern.decode) on prompt j: what c = 1 was before."""
        from trikern.decode import GenerationConfig, decode, new_context
        gen = GenerationConfig(max_new_tokens=new, block_size=B)
        t0 = time.perf_counter()
        ctx = new_context(model, gen, len(prompts[j]), mode)
        n = sum(len(piece) for piece in decode(ctx, torch.tensor(prompts[j]), mode, profile=False))
        return n / (time.perf_counter() - t0)

    for m, B in modes:  # warm-up: the CPU backend times its matmul paths once per shape
        if m == "auto":  # auto's step costs per batch size, as `trikern serve` measures them when it warms up
            lm.warmup(block_size=B, batch_sizes=levels)
        for c in levels:
            serve(m, B, c, 16)
    def alone(mode, B, j, new):
        dec = BatchDecoder(model, max_batch=1, mode=mode, block_size=B, context=context, cuda_graphs=graphs)
        seq = dec.add(prompts[j], max_new_tokens=new)
        for _ in dec.run():
            pass
        return seq.tokens

    ref = {(m, B, j): alone(m, B, j, a.max_new_tokens) for m, B in modes
           for j in range(min(max(levels) + a.repeats - 1, len(prompts)))}
    res = {(m, B, c): [] for m, B in modes for c in levels}
    same = dict.fromkeys(res, True)
    split = {k: [0.0] * 4 for k in res}  # what the repeats' steps were: `counters`
    base_today = {mb: [] for mb in modes}

    def lockstep(order, c, new, first=0):
        """{(mode, B): serve()'s figures} of every mode's c users at once, the modes' decoders taking
        one step each in turn: a slow spell of a shared machine lands on every mode alike. A decoder's
        clock is the sum of its own steps' times: aggregate = its tokens over its clock, a user's time
        its decoder's clock at the user's last token."""
        clock, done_at, seqs = {}, {}, {}
        for m, B in order:
            dec = decoder(m, B, c)
            seqs[(m, B)] = [dec.add(prompts[(first + i) % len(prompts)], max_new_tokens=new) for i in range(c)]
            clock[(m, B)] = 0.0
        live = list(order)
        while live:
            for mb in list(live):
                dec = decoders[(*mb, c)]
                t0 = time.perf_counter()
                dec.step()
                clock[mb] += time.perf_counter() - t0
                for s in seqs[mb]:
                    if s.done and s not in done_at:
                        done_at[s] = clock[mb]
                if not dec.busy:
                    live.remove(mb)
        return {mb: (sum(len(s.tokens) for s in ss) / clock[mb], statistics.median(len(s.tokens) / done_at[s] for s in ss),
                     max(done_at[s] for s in ss), [s.tokens for s in ss]) for mb, ss in seqs.items()}

    def one_repeat(r):
        """Every (mode, c) once, taking turns, the modes' order rotated each repeat (no mode always
        runs at the same point of a repeat): rows appended to res and base_today. With --lockstep,
        at each c the modes' decoders step in turns (`lockstep`)."""
        k = r % len(modes)
        order = modes[k:] + modes[:k]
        solo_s = {}
        for m, B in order:
            base_today[(m, B)].append(today(m, B, a.max_new_tokens, r % len(prompts)))
        for c in levels:
            before = {mb: counters(decoder(*mb, c)) for mb in order}
            figures = lockstep(order, c, a.max_new_tokens, first=r) if a.lockstep else \
                {(m, B): serve(m, B, c, a.max_new_tokens, first=r) for m, B in order}
            for mb in order:
                after = counters(decoder(*mb, c))
                split[(*mb, c)] = [x + y - z for x, y, z in zip(split[(*mb, c)], after, before[mb])]
            for (m, B), (agg, user, slowest, outs) in figures.items():
                if c == 1:
                    solo_s[(m, B)] = slowest
                same[(m, B, c)] &= all(out == ref[(m, B, (r + i) % len(prompts))] for i, out in enumerate(outs))
                res[(m, B, c)].append((agg, user, slowest, slowest / solo_s[(m, B)] if (m, B) in solo_s
                                       else float("nan")))

    t_start = time.time()
    done = 0  # repeats completed: a run stopped by SIGTERM (`timeout`) or Ctrl-C reports those
    main_thread = threading.current_thread() is threading.main_thread()
    restore = signal.signal(signal.SIGTERM, interrupt) if main_thread else None
    try:
        for r in range(a.repeats):
            one_repeat(r)
            done = r + 1
            print(f"# repeat {done}/{a.repeats} done ({time.time() - t_start:.0f} s)", file=sys.stderr, flush=True)
    except KeyboardInterrupt:
        print(f"# stopped after {done} of {a.repeats} repeats", file=sys.stderr, flush=True)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, restore)
    if not done:
        print("# stopped before a repeat completed: no figures")
        return 1
    for rows in (*res.values(), *base_today.values()):
        del rows[done:]  # the interrupted repeat's rows

    w = model.embed_tokens.weight
    where = (f"{torch.cuda.get_device_name(w.device)}, torch {torch.__version__}, triton {triton_version()}, "
             f"CUDA graphs {'off' if a.no_cuda_graphs else 'on'}"
             if w.is_cuda else f"CPU ({a.threads} thread{'s' if a.threads > 1 else ''})")
    what = f"synthetic {a.synthetic} ({model.cfg.num_hidden_layers} layers, random weights)" if a.synthetic else \
        "embedded model"
    print(f"# {what}, {where}, {str(w.dtype).replace('torch.', '')}, greedy, {a.max_new_tokens} new tokens per "
          f"user, {done} repeats interleaved{', the modes in lockstep (own-step clocks)' if a.lockstep else ''}; "
          f"medians over repeats; x c=1: aggregate over the same mode's c=1, per repeat")
    print("| mode | c | aggregate tok/s | x c=1 | per-user tok/s | slowest / solo | = solo |")
    print("|---|---|---|---|---|---|---|")
    out = []
    for m, B in modes:
        base = res[(m, B, levels[0])]
        for c in levels:
            v = res[(m, B, c)]
            agg = statistics.median(x[0] for x in v)
            ratio = statistics.median(x[0] / b[0] for x, b in zip(v, base))
            user = statistics.median(x[1] for x in v)
            slow = statistics.median(x[3] for x in v)
            name = m if B is None else f"{m} B={B}"
            print(f"| {name} | {c} | {agg:.1f} | {ratio:.2f} | {user:.1f} | {slow:.2f} | "
                  f"{'yes' if same[(m, B, c)] else 'no'} |")
            full, ragged, own, steps = split[(m, B, c)]
            out.append(dict(mode=m, B=B, c=c, aggregate=agg, x_c1=ratio, per_user=user, slowest_over_solo=slow,
                            equals_solo=same[(m, B, c)], aggregates=[x[0] for x in v],
                            ragged_share=ragged / (full + ragged) if full + ragged else 0.0,
                            **({"own_us_per_step": 1e6 * own / steps if steps else 0.0} if m == "auto" else {})))
    if len(levels) > 1 or levels[0] > 1:
        # Why speculation's per-step gain shrinks in the aggregate: a step that gives the users
        # different yields puts some ahead, and the last ones then finish at smaller batch sizes.
        print("# decode time in the ragged end (steps decoding fewer than c users), share: " + "; ".join(
            f"{m if B is None else f'{m} B={B}'} " + ", ".join(
                f"c={r['c']} {100 * r['ragged_share']:.0f}%" for r in out if (r['mode'], r['B']) == (m, B) and r['c'] > 1)
            for m, B in modes))
    fixed = [mb for mb in modes if mb[0] != "auto"]

    for m, B in [mb for mb in modes if mb[0] == "auto"]:
        for c in levels:
            if not fixed:
                break
            top, plain, held = against_best([x[0] for x in res[(m, B, c)]],
                                            {mb: [x[0] for x in res[(*mb, c)]] for mb in fixed})
            name = top[0] if top[1] is None else f"{top[0]} B={top[1]}"
            print(f"# auto B<={B}, c={c}: {plain:.2f}x the best fixed setting's aggregate ({name}); "
                  f"{held:.2f}x the best of the other repeats (leave-one-out)")
            steps: dict = {}  # what it ran, all repeats and the warm-up: steps per candidate
            for (n, key), k in decoders[(m, B, c)].step_kind.chosen.items():
                label = key[0] if key[0] == "ar" else f"{key[0]} B={key[1]}"
                steps[label] = steps.get(label, 0) + k
            print(f"#   its steps: {', '.join(f'{k} {v}' for k, v in sorted(steps.items(), key=lambda x: -x[1]))}")
            full, ragged, own, n = split[(m, B, c)]
            print(f"#   its own time (choosing, observing, profile writes): {1e6 * own / max(n, 1):.0f} us a step, "
                  f"{100 * own / max(full + ragged, 1e-9):.1f}% of its decode time")
    for m, B in modes:
        name = m if B is None else f"{m} B={B}"
        one = [x[0] for x in res[(m, B, 1)]] if 1 in levels else None
        if one:
            ratio = statistics.median(x / y for x, y in zip(one, base_today[(m, B)]))
            print(f"# {name}: the single-sequence decoder (trikern.decode) {statistics.median(base_today[(m, B)]):.1f} "
                  f"tok/s; batched c=1 / it = {ratio:.2f}")
    if a.json:
        Path(a.json).write_text(json.dumps(out, indent=1))
    return 0


def counters(dec) -> tuple:
    """(seconds of steps decoding all of max_batch's sequences, of steps decoding fewer: a batch's ragged
    end, where the users left one by one, auto's own seconds (choosing, observing, profile writes),
    steps) a decoder has run so far; steps with prefill pieces in neither of the first two."""
    full = dec.decode_seconds.get(dec.max_batch, 0.0)
    return full, sum(dec.decode_seconds.values()) - full, getattr(dec.step_kind, "own_seconds", 0.0), dec.steps


def against_best(auto: list, fixed: dict) -> tuple:
    """(the best fixed setting, auto over it, auto over the best of the other repeats): `auto` and
    each `fixed[setting]` list one aggregate per repeat. The best fixed setting is the one of highest
    median, and auto is compared with it repeat by repeat, the median of those ratios (the best of
    each repeat's fixed figures would pick, among near-tied settings, whichever a slow spell spared:
    a maximum of noise that no setting achieves). But choosing the best on the repeats it is compared
    on still favours it among near-ties (AR and linear B = 4 at 4 users): whichever the noise lifted
    wins, and auto's ratio reads low even where auto matched either one. Leave-one-out removes that:
    repeat r is compared with the setting best over the other repeats, which r's noise did not choose."""
    def best(skip=None):
        return max(fixed, key=lambda k: statistics.median(
            x for i, x in enumerate(fixed[k]) if i != skip or len(fixed[k]) == 1))
    top = best()
    plain = statistics.median(a / f for a, f in zip(auto, fixed[top]))
    held = statistics.median(a / fixed[best(r)][r] for r, a in enumerate(auto))
    return top, plain, held


def synthetic(a):
    """(a trikern Model of random weights of a.synthetic's shape, random prompts)."""
    import torch

    from trikern.api import Model
    from trikern.bench.synthetic import as_loaded, load_shape, random_model

    device = torch.device(a.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtypes = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp32": torch.float32, "float32": torch.float32}
    if a.dtype is not None and a.dtype not in dtypes:
        raise SystemExit(f"bench_batch.py: error: --dtype {a.dtype}: expected one of {', '.join(dtypes)}")
    dtype = dtypes.get(a.dtype, torch.bfloat16)
    cfg, _ = load_shape(a.synthetic, a.layers)
    model = as_loaded(random_model(cfg, device, dtype, "auto"))
    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(0, cfg.vocab_size, (a.prompt_tokens,), generator=g).tolist() for _ in range(16)]
    return Model(model, None), prompts


def interrupt(signum, frame):
    """SIGTERM as Ctrl-C: the repeats done so far are reported (a GPU session's `timeout` stops it)."""
    raise KeyboardInterrupt


def triton_version() -> str:
    import triton
    return triton.__version__


if __name__ == "__main__":
    sys.exit(main())
