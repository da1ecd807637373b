"""Step-cost profile for `mode="auto"`: seconds and tokens per step of each (mode, block size).

Stored next to the kernel autotune results (kernels/autotune_store.py: same directories, same atomic
JSON files), one file per device x model shape x dtype x backend, one entry per
`mode/block/cache-length bucket` (a step of one sequence), or `mode/block/bucket/xN` (a step of N
sequences in one batch, trikern.batch). `trikern tune --decode` fills it by timing real steps at a few
cache lengths (tuning.measure) and, with `--batch-sizes`, batch sizes (tuning.measure_batch);
without it, the first auto generation measures its candidates on the fly and `AutoPolicy.finish`
saves what it saw. TRIKERN_DECODE_PROFILE=0 switches the stored profile off
(`StepProfile.enabled()`): auto then measures on the fly in every generation and saves nothing.
"""
from __future__ import annotations

import warnings

import torch

from ...kernels import autotune
from ... import devices
from ...kernels import autotune_store as store

OP_PREFIX = "decode-steps"


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

    @staticmethod
    def key_str(key, bucket, batch: int = 1) -> str:
        return f"{key[0]}/{key[1]}/{bucket}" + (f"/x{batch}" if batch > 1 else "")

    def _costs_of(self, key):
        """(cache-length bucket, batch size, entry) of every stored cost of `key`: entries
        `mode/B/bucket` (batch size 1) and `mode/B/bucket/xN`."""
        prefix = f"{key[0]}/{key[1]}/"
        for k, v in self.entries.items():
            if not k.startswith(prefix):
                continue
            bucket, _, batch = k[len(prefix):].partition("/x")
            if bucket.isdigit() and (batch == "" or batch.isdigit()):
                yield int(bucket), int(batch or 1), v

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
        entry = {"seconds": float(seconds), "tokens": float(tokens), "steps": int(steps)}
        self._write({self.key_str(key, bucket, batch): entry})

    def save_batch(self, measured: dict, replace: bool = False):
        """measured: (key, batch size) -> (seconds, tokens, steps) at this bucket, one atomic write.
        `replace`: the keys' other batch entries (other sizes, other buckets) go, so sizes between the
        measured ones interpolate between them: entries a drain persisted before a code or machine
        change kept their old figures (AR at 3 sequences 5.2 ms next to 4.4 retuned at 2 and 4)."""
        out = {self.key_str(key, self.bucket, n): {"seconds": float(sec), "tokens": float(tok), "steps": int(steps)}
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

    def update(self, costs: dict, acceptance: dict, drop=(), exploration=None, batched: bool = False):
        """costs: key -> (seconds, tokens, steps); acceptance: family -> hazards per draft position
        (`batched`: into batched decoding's prior); drop: keys whose stored costs were refused
        (policy.implausible) and not measured again. One atomic write."""
        out = {self.key_str(key, self.bucket): {"seconds": float(seconds), "tokens": float(tokens), "steps": int(steps)}
               for key, (seconds, tokens, steps) in costs.items()}
        for family, hazards in acceptance.items():
            # Each generation moves the prior halfway: one prompt's text (a table after prose) is
            # a poor guide to the next one's, and a prior it alone set would steer a whole generation.
            old = self.get_acceptance(family, batched) or []
            hazards = [h if k >= len(old) else old[k] + self.BLEND * (h - old[k]) for k, h in enumerate(hazards)]
            hazards += old[len(hazards):]  # positions this generation never reached keep theirs
            out[self.acceptance_key(family, batched)] = {f"h{k + 1}": round(float(h), 4) for k, h in enumerate(hazards)}
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
        out = {self.key_str(key, self.bucket, n): {"seconds": float(sec), "steps": int(steps)}
               for n, by_key in costs.items() for key, (sec, steps) in by_key.items()}
        out.update({self.exploration_key(n): self._outcomes(e) for n, e in (exploration or {}).items()})
        if out:
            self._write(out)

    def _write(self, entries: dict, drop=()):
        self.entries.update(entries)
        for k in drop:
            self.entries.pop(k, None)
        try:
            store.save_results(store.write_dir(), self.device, self.op, entries, drop)
        except OSError as e:  # a read-only install still decodes, it just measures again next time
            warnings.warn(f"decode profile not saved: {e}", RuntimeWarning, stacklevel=3)


__all__ = ["StepProfile", "device_name", "model_key"]
