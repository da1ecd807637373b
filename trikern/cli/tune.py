"""`trikern tune`: autotune every kernel on the local GPU (kernels/autotune.py), or with --decode
measure auto's step-cost profile of a model on this device (decode/auto/profile.py)."""
from __future__ import annotations

import sys
from pathlib import Path

from .options import UsageError

KERNEL_ONLY = ("ops", "out", "keep")
DECODE_ONLY = ("model", "device", "dtype", "block_size", "cache_lengths", "batch_sizes", "steps", "threads")


def add_parser(sub):
    t = sub.add_parser("tune", help="autotune every kernel on the local GPU and write the cache",
                       description="Benchmark every kernel config on this GPU over representative shapes and write "
                       "autotune_cache/<gpu>/<triton version>/<op>.json (TRIKERN_AUTOTUNE_DIR overrides). With "
                       "--decode, measure auto's step-cost profile instead.")
    k = t.add_argument_group("kernels (without --decode)")
    k.add_argument("--ops", default=None, help="comma-separated op modules to tune (default: all)")
    k.add_argument("--out", type=Path, default=None, help="result directory (default: TRIKERN_AUTOTUNE_DIR, "
                   "the checkout's autotune_cache/, or the user cache dir); use trikern/autotune to ship results")
    k.add_argument("--keep", action="store_true", help="keep existing results, tune only missing keys")
    d = t.add_argument_group("decode step costs (--decode)", "Time real decode steps of every mode='auto' candidate "
                             "(AR, spec-linear and spec-quadratic at block sizes 2..32 as the model allows) at a few "
                             "cache lengths and save them next to the kernel results.")
    d.add_argument("--decode", action="store_true", help="tune the decode loop (the options of this group) instead "
                   "of the kernels")
    d.add_argument("--model", metavar="PATH", default=None, help="checkpoint folder (default: the embedded model)")
    d.add_argument("--device", default=None)
    d.add_argument("--dtype", default=None, choices=["bfloat16", "float16", "float32"])
    d.add_argument("--block-size", type=int, default=None, metavar="B", help="largest block size (default: the "
                   "checkpoint's)")
    d.add_argument("--cache-lengths", default=None, metavar="N,N", help="cache lengths to time at")
    d.add_argument("--batch-sizes", default=None, metavar="N,N", help="also time steps of N sequences decoding "
                   "together (trikern.batch, `trikern serve --max-batch`), for batched auto: e.g. 2,4,8; the stored "
                   "costs at other batch sizes go (sizes between interpolate)")
    d.add_argument("--steps", type=int, default=None, help="warm steps per candidate and length (default: 4)")
    d.add_argument("--threads", type=int, default=None, metavar="N", help="torch CPU threads, as `trikern bench "
                   "--threads` (a profile is kept per thread count: tune with the count you decode with)")
    return t


def run(a) -> int:
    given = [n for n in (KERNEL_ONLY if a.decode else DECODE_ONLY)
             if getattr(a, n) is not None and getattr(a, n) is not False]  # unset: None, or False for --keep
    if given:
        opt = "--" + given[0].replace("_", "-")
        raise UsageError(f"{opt} does not apply with --decode" if a.decode else f"{opt} applies only with --decode")
    return tune_decode(a) if a.decode else tune_kernels(a)


def tune_kernels(a) -> int:
    """`trikern tune`: benchmark every op over its representative shapes and write the cache. The
    options reach choose() through `autotune.tuning()`; TRIKERN_AUTOTUNE=0 does not stop this command."""
    import torch  # noqa: PLC0415

    from ..kernels import autotune  # noqa: PLC0415
    from ..kernels.dispatch import interpreting  # noqa: PLC0415

    modules = autotune.modules_with("tune_shapes")
    ops, problem = autotune.select_ops(a.ops, modules)
    if problem:
        print(f"trikern tune: error: {problem}", file=sys.stderr)
        return 2
    if interpreting() or not torch.cuda.is_available():
        print("trikern tune: needs a CUDA GPU (and TRITON_INTERPRET unset); nothing tuned.", file=sys.stderr)
        return 2
    if autotune.env_disabled():
        print("trikern tune: ignoring TRIKERN_AUTOTUNE=0 for this run", file=sys.stderr)
    count, where = autotune.tune_ops(modules, ops, out=a.out, force=not a.keep, log=lambda s: print(s, flush=True))
    print(f"trikern tune: {count} shapes on {autotune.gpu_name()} (sm_{autotune.arch_of()}), triton "
          f"{autotune.triton_version()}; results in {where}")
    return 0


def tune_decode(a) -> int:
    """`trikern tune --decode`: measure and persist the step-cost profile of a model."""
    def error(message):
        print(f"trikern tune --decode: error: {message}", file=sys.stderr)
        return 2

    cache_lengths = "256,2048" if a.cache_lengths is None else a.cache_lengths
    steps = 4 if a.steps is None else a.steps
    try:
        lengths = [int(x) for x in cache_lengths.split(",") if x.strip()]
        if not lengths or min(lengths) < 1:
            raise ValueError
    except ValueError:
        return error(f"--cache-lengths {cache_lengths!r}: expected positive integers separated by commas")
    try:
        batch_sizes = [int(x) for x in (a.batch_sizes or "").split(",") if x.strip()]
        if a.batch_sizes is not None and (not batch_sizes or min(batch_sizes) < 1):
            raise ValueError
    except ValueError:
        return error(f"--batch-sizes {a.batch_sizes!r}: expected positive integers separated by commas")
    if steps < 1:
        return error(f"--steps {steps}: must be >= 1")
    if a.threads is not None and a.threads < 1:
        return error(f"--threads {a.threads}: must be >= 1")
    import torch  # noqa: PLC0415

    if a.threads:
        torch.set_num_threads(a.threads)

    from .. import load  # noqa: PLC0415
    from ..decode.auto.profile import StepProfile  # noqa: PLC0415
    from ..decode.auto.tuning import measure, measure_batch  # noqa: PLC0415
    from ..kernels import autotune_store as store  # noqa: PLC0415

    try:
        m = load(a.model, device=a.device, dtype=getattr(torch, a.dtype) if a.dtype else None)
        if a.block_size is not None:
            m.check_options(mode="auto", block_size=a.block_size)
    except (ValueError, FileNotFoundError) as e:
        return error(e)
    if not StepProfile.enabled():
        print("trikern tune --decode: TRIKERN_DECODE_PROFILE=0: the profile is written, but auto reads it only "
              "once the variable is unset", file=sys.stderr)
    prof = measure(m.model, lengths, steps, a.block_size)
    if batch_sizes:
        prof = measure_batch(m.model, batch_sizes, min(lengths), steps, a.block_size, replace=True)
    where = store.result_path(store.write_dir(), prof.device, prof.op)
    print(f"step-cost profile of {len(prof.entries)} (mode, block, cache length[, batch size]) entries written to {where}")
    return 0
