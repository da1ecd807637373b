"""`python -m trikern.train`: train a tri-mode model on Python sources, export it.

  python -m trikern.train train --run runs/default [--steps N --distill-start S ...]
  python -m trikern.train export --run runs/default --to trikern/assets/default

Every TrainConfig field is an option (`--seq-len`, `--batch-size`, ...). `train` resumes from the
run folder's checkpoint when one exists.
"""
from __future__ import annotations

import argparse
import shutil
import sys
import typing
from dataclasses import fields
from pathlib import Path

from .data import DataError
from .trainer import TrainConfig, Trainer

_TYPES = {"int | None": int, "str | None": str}


def _parse_bool(s: str) -> bool:
    if s.lower() in ("1", "true", "yes", "on"):
        return True
    if s.lower() in ("0", "false", "no", "off"):
        return False
    raise argparse.ArgumentTypeError(f"expected true/false, got {s!r}")


def _add_config_options(p: argparse.ArgumentParser):
    for f in fields(TrainConfig):
        t = _TYPES.get(str(f.type), {"int": int, "float": float, "bool": _parse_bool, "str": str}.get(str(f.type)))
        if t is None:
            t = typing.get_type_hints(TrainConfig)[f.name]
        p.add_argument("--" + f.name.replace("_", "-"), dest=f.name, type=t, default=None,
                       help=f"(default: {f.default})")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m trikern.train", description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    tr = sub.add_parser("train", help="train (or resume) a run")
    tr.add_argument("--run", required=True, type=Path, help="run folder (checkpoints, logs, export/)")
    tr.add_argument("--max-minutes", type=float, default=None, help="stop (after a checkpoint) after this wall time")
    tr.add_argument("--no-progress", action="store_true", help="no progress bar")
    _add_config_options(tr)
    ex = sub.add_parser("export", help="copy a run's latest export to a model folder")
    ex.add_argument("--run", required=True, type=Path)
    ex.add_argument("--to", required=True, type=Path)
    args = ap.parse_args(argv)
    try:
        if args.cmd == "train":
            meta = args.run / "meta.json"
            base = TrainConfig.from_dict(__import__("json").loads(meta.read_text())) if meta.is_file() else TrainConfig()
            overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig) if getattr(args, f.name) is not None}
            tc = TrainConfig.from_dict({**base.__dict__, **overrides})
            Trainer(tc, args.run, progress=not args.no_progress).run(args.max_minutes)
            print(f"model written to {args.run / 'export'}")
        else:
            src = args.run / "export"
            if not (src / "model.safetensors").is_file():
                raise DataError(f"{src}: no exported model (train first)")
            args.to.mkdir(parents=True, exist_ok=True)
            for name in ("config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"):
                tmp = args.to / f".{name}.tmp"
                shutil.copyfile(src / name, tmp)
                tmp.replace(args.to / name)
            print(f"copied {src} -> {args.to}")
    except (DataError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
