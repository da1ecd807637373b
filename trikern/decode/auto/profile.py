"""Step-cost profile for `mode="auto"`: seconds and tokens per step of each (mode, block size).

Stored next to the kernel autotune results (kernels/autotune_store.py: same directories, same atomic
JSON files), one file per device x model shape x dtype x backend, one entry per
`mode/block/cache-length bucket` (a step of one sequence), or `mode/block/bucket/xN` (a step of N
sequences in one batch, trikern.batch). `trikern tune --decode` fills it by timing real steps at a few
cache lengths (tuning.measure) and, with `--batch-sizes`, batch sizes (tuning.measure_batch);
without it, the first auto generation measures its candidates on the fly and `AutoPolicy.finish`
saves what it saw. TRIKERN_DECODE_PROFILE=0 switches the stored profile off
(`StepProfile.enabled()`): auto then measures on the fly in every generation and saves nothing.

A step's cost is a property of the code that runs it as much as of the machine, so every stored cost
carries the stamp of that code (`code_stamp`); a cost stamped by other code is not read, and the
next write removes it. The acceptance priors and exploration outcomes are the texts' and stay.
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import warnings
from pathlib import Path

import torch

from ...kernels import autotune
from ... import devices
from ...kernels import autotune_store as store

OP_PREFIX = "decode-steps"

_PACKAGE = Path(__file__).resolve().parents[2]  # trikern/
# The code a step runs (kernels, model, caches, the strategies' steps, the batched forward) and how
# `trikern tune` times it; not auto's choosing, the front-ends or training, whose edits do not
# change what a step costs.
STEP_CODE = ("kernels", "quant", "decode", "batch", "model.py", "cache.py", "sampling.py", "warmup.py",
             "cpu_features.py", "devices.py")
NOT_STEP_CODE = tuple(f"decode/auto/{f}.py" for f in ("acceptance", "costs", "exploration", "policy", "profile")) \
    + ("batch/auto.py",)


@functools.cache
def code_stamp() -> str:
    """The stamp of the running package's step code (`stamp_of`). Stored costs outlived code changes
    without a re-tune and misled auto: after a session's speedups the profile priced AR at 4
    sequences 6.41 ms a step where it took 4.47, linear B = 4 14.4 against 11.48, and batched auto
    at 4 users ran 0.84-0.92x the best fixed setting (0.95x once retuned)."""
    return stamp_of(_PACKAGE)


def stamp_of(package: Path) -> str:
    """A short hash of the step code's sources under `package` (STEP_CODE less NOT_STEP_CODE) and
    torch's version."""
    package = Path(package)
    h = hashlib.sha1(torch.__version__.encode())
    for part in STEP_CODE:
        root = package / part
        for f in sorted(root.rglob("*.py")) if root.is_dir() else [root]:
            rel = f.relative_to(package).as_posix()
            if f.is_file() and rel not in NOT_STEP_CODE:
                h.update(rel.encode() + b"\0" + f.read_bytes())
    return h.hexdigest()[:12]


def device_name(device: torch.device) -> str:
    """The profile's directory name: the GPU's name, or the CPU's model and thread count (a step's
    cost on a CPU depends on both)."""
    name = devices.device_name(device)
    return store.sanitize(name if device.type == "cuda" else f"cpu-{name}-{torch.get_num_threads()}t")


def model_key(model) -> str:
    c, w = model.cfg, model.embed_tokens.weight
    return store.sanitize(
        f"{OP_PREFIX}-{c.model_type}-L{c.num_hidden_layers}-H{c.hidden_size}-I{c.intermediate_size}"
        f"-h{c.num_attention_heads}-kv{c.num_key_value_heads}-d{c.head_dim}-V{c.vocab_size}"
        f"-{str(w.dtype).removeprefix('torch.')}-{model.backend}")


class StepProfile:
    BLEND = 0.5  # how far one generation moves the acceptance prior

    @staticmethod
    def enabled() -> bool:
        """Whether auto reads and writes stored profiles: unless TRIKERN_DECODE_PROFILE=0."""
        return not autotune.switched_off("TRIKERN_DECODE_PROFILE")

    def __init__(self, model, cache_length: int):
        self.device = device_name(model.embed_tokens.weight.device)
        self.op = model_key(model)
        self.bucket = autotune.bucket(cache_length, floor=256)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a foreign file only means no prior
            self.entries: dict[str, dict] = store.load_merged(self.device, self.op)
        # Costs other code measured: not read, and gone at the next write.
        self.stale = {k for k, v in self.entries.items()
                      if self.cost_key(k.split("/", 2)[-1]) and v.get("code") != code_stamp()}
        self.pending: tuple[dict, set] | None = None  # writes held for one file write (`one_write`)

    @staticmethod
    def key_str(key, bucket, batch: int = 1) -> str:
        return f"{key[0]}/{key[1]}/{bucket}" + (f"/x{batch}" if batch > 1 else "")

    def _costs_of(self, key):
        """(cache-length bucket, batch size, entry) of every stored cost of `key`: entries
        `mode/B/bucket` (batch size 1) and `mode/B/bucket/xN`."""
        prefix = f"{key[0]}/{key[1]}/"
        for k, v in self.entries.items():
            if k.startswith(prefix) and (parsed := self.cost_key(k[len(prefix):])) and k not in self.stale:
                yield *parsed, v

    @staticmethod
    def cost_entry(seconds: float, steps: int, tokens: float | None = None) -> dict:
        """A stored step cost, stamped with the step code that measured it (`code_stamp`)."""
        entry = {"seconds": float(seconds), "steps": int(steps), "code": code_stamp()}
        return entry if tokens is None else {**entry, "tokens": float(tokens)}

    @staticmethod
    def cost_key(tail: str):
        """(bucket, batch size) of a cost entry's key past `mode/B/`, or None."""
        bucket, _, batch = tail.partition("/x")
        return (int(bucket), int(batch or 1)) if bucket.isdigit() and (batch == "" or batch.isdigit()) else None

    def nearest(self, key, batch: int = 1):
        """`key`'s stored entry for `batch` sequences at the nearest cache-length bucket, or None."""
        found = [(abs(b - self.bucket), v) for b, n, v in self._costs_of(key) if n == batch]
        return min(found, key=lambda x: x[0])[1] if found else None

    def get(self, key):
        """{'seconds', 'tokens'} of one sequence's step at the nearest measured cache-length bucket, or None."""
        return self.nearest(key)

    def batch_seconds(self, key) -> dict[int, float]:
        """{batch size: seconds per step} stored for `key`, each at its nearest cache-length bucket
        (batch size 1: `get`'s entry)."""
        out = {}
        for n in {n for _, n, _ in self._costs_of(key)}:
            sec = self.nearest(key, n).get("seconds")
            if isinstance(sec, (int, float)) and sec > 0:
                out[n] = float(sec)
        return out

    def save(self, key, bucket, seconds: float, tokens: float, steps: int, batch: int = 1):
        """One measured cost; `tokens`: per sequence and step."""
        self._write({self.key_str(key, bucket, batch): self.cost_entry(seconds, steps, tokens)})

    def save_batch(self, measured: dict, replace: bool = False):
        """measured: (key, batch size) -> (seconds, tokens, steps) at this bucket, one atomic write.
        `replace`: the keys' other batch entries (other sizes, other buckets) go, so sizes between the
        measured ones interpolate between them: entries a drain persisted before a code or machine
        change kept their old figures (AR at 3 sequences 5.2 ms next to 4.4 retuned at 2 and 4)."""
        out = {self.key_str(key, self.bucket, n): self.cost_entry(sec, steps, tok)
               for (key, n), (sec, tok, steps) in measured.items()}
        gone = [] if not replace else [self.key_str(key, b, n) for key in {k for k, _ in measured}
                                       for b, n, _ in self._costs_of(key) if n > 1]
        gone = [k for k in gone if k not in out]
        self._write(out, gone)

    @staticmethod
    def acceptance_key(family: str, batched: bool = False) -> str:
        return f"{family}/acceptance" + ("/batched" if batched else "")

    def get_acceptance(self, family: str, batched: bool = False) -> list[float] | None:
        """The long-run hazard per draft position (policy.Acceptance) of `family` over recent
        generations (a prior), or None; `batched`: batched decoding's own (trikern.batch.auto).
        Stored as h1, h2, ... (result files hold scalars only)."""
        e = self.entries.get(self.acceptance_key(family, batched)) or {}
        out = []
        while isinstance(e.get(f"h{len(out) + 1}"), (int, float)) and 0 <= e[f"h{len(out) + 1}"] <= 1:
            out.append(float(e[f"h{len(out) + 1}"]))
        return out or None

    def acceptance_evidence(self, family: str, batched: bool = False) -> float:
        """Steps that verified a draft behind `get_acceptance`'s prior (stored as n); 0 without a
        prior, or for one stored before the count was kept."""
        n = (self.entries.get(self.acceptance_key(family, batched)) or {}).get("n")
        return float(n) if isinstance(n, (int, float)) and n > 0 and self.get_acceptance(family, batched) else 0.0

    @staticmethod
    def exploration_key(batch: int = 1) -> str:
        return "explore/outcomes" + (f"/x{batch}" if batch > 1 else "")

    def get_exploration(self, batch: int = 1) -> tuple | None:
        """(hits, tries[, probe credit]) of earlier generations' explorations (policy's
        `Exploration`) at `batch` sequences a step, or None."""
        e = self.entries.get(self.exploration_key(batch)) or {}
        h, t, c = e.get("hits"), e.get("tries"), e.get("credit")
        ok = all(isinstance(x, (int, float)) for x in (h, t)) and 0 <= h <= t
        if not ok:
            return None
        return (float(h), float(t)) + ((float(c),) if isinstance(c, (int, float)) and 0 <= c < 2 else ())

    def update(self, costs: dict, acceptance: dict, drop=(), exploration=None, batched: bool = False,
               evidence: dict | None = None):
        """costs: key -> (seconds, tokens, steps); acceptance: family -> hazards per draft position
        (`batched`: into batched decoding's prior), `evidence`: family -> the steps that verified a
        draft behind them; drop: keys whose stored costs were refused (policy.implausible) and not
        measured again. One atomic write."""
        out = {self.key_str(key, self.bucket): self.cost_entry(seconds, steps, tokens)
               for key, (seconds, tokens, steps) in costs.items()}
        for family, hazards in acceptance.items():
            # Each generation moves the prior halfway: one prompt's text (a table after prose) is
            # a poor guide to the next one's, and a prior it alone set would steer a whole generation.
            # But a prior resting on fewer steps than the new figures moves further, in proportion:
            # two unlucky steps of a first exploration had set a batches' prior of h1 = 0.75, which
            # priced linear B = 4 at 1.3 tokens a step where the texts gave 2.8.
            old = self.get_acceptance(family, batched) or []
            n_old, n_new = self.acceptance_evidence(family, batched), (evidence or {}).get(family)
            w = self.BLEND if n_new is None else max(self.BLEND, n_new / max(n_old + n_new, 1e-9))
            hazards = [h if k >= len(old) else old[k] + w * (h - old[k]) for k, h in enumerate(hazards)]
            hazards += old[len(hazards):]  # positions this generation never reached keep theirs
            entry = {f"h{k + 1}": round(float(h), 4) for k, h in enumerate(hazards)}
            if n_old + (n_new or 0) > 0:
                entry["n"] = round(n_old + (n_new or 0), 2)
            out[self.acceptance_key(family, batched)] = entry
        if exploration is not None:
            out[self.exploration_key()] = self._outcomes(exploration)
        # A refused cost goes at every cache-length bucket: `get` would fall back to a neighbour's.
        # (Only one sequence's: the batch sizes' costs were measured apart.)
        gone = [self.key_str(key, b) for key in drop for b, n, _ in self._costs_of(key) if n == 1]
        self._write(out, gone)

    @staticmethod
    def _outcomes(exploration) -> dict:
        return dict(zip(("hits", "tries", "credit"), (round(float(x), 4) for x in exploration)))

    def update_batch(self, costs: dict, exploration: dict | None = None):
        """costs: batch size -> {key: (seconds per step, steps behind it)} (batched auto's live
        figures); exploration: batch size -> (hits, tries, probe credit) for the next batch's prior. One atomic
        write."""
        out = {self.key_str(key, self.bucket, n): self.cost_entry(sec, steps)
               for n, by_key in costs.items() for key, (sec, steps) in by_key.items()}
        out.update({self.exploration_key(n): self._outcomes(e) for n, e in (exploration or {}).items()})
        if out:
            self._write(out)

    @contextlib.contextmanager
    def one_write(self):
        """The writes inside become one atomic file write at the end, as if made in turn (a later
        entry undoes an earlier drop and the other way round). A drained batch teaches the prior and
        saves its costs: as two writes they took ~2.5 ms a batch (20-30% of batched auto's own time on
        the EPYC VM), as one ~1.8. Inside another `one_write`, the writes join the outer one's."""
        if self.pending is not None:
            yield self
            return
        self.pending = ({}, set())
        try:
            yield self
        finally:
            (entries, drop), self.pending = self.pending, None
            if entries or drop:
                self._save(entries, drop)

    def _write(self, entries: dict, drop=()):
        drop = {*drop, *self.stale} - entries.keys()
        self.stale = set()
        self.entries.update(entries)
        for k in drop:
            self.entries.pop(k, None)
        if self.pending is None:
            self._save(entries, drop)
            return
        held, gone = self.pending
        for k in drop:
            held.pop(k, None)
        held.update(entries)
        gone.difference_update(entries)
        gone.update(drop)

    def _save(self, entries: dict, drop):
        try:
            store.save_results(store.write_dir(), self.device, self.op, entries, drop)
        except OSError as e:  # a read-only install still decodes, it just measures again next time
            warnings.warn(f"decode profile not saved: {e}", RuntimeWarning, stacklevel=4)


__all__ = ["StepProfile", "code_stamp", "device_name", "model_key"]
