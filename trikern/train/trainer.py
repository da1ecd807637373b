"""The training loop: data preparation, AdamW with warmup + cosine, bf16 autocast, resumable
checkpoints and periodic export.

Everything random is a pure function of (seed, step): model init from the seed, the batch and the
noise of step s from generators seeded with (seed, s). Resuming from a checkpoint therefore
reproduces the uninterrupted run. A run folder holds: meta.json (the config), tokenizer.json,
tokens.pt (train / held-out streams), ckpt.pt (latest state), log.jsonl and export/ (the latest
model in Hugging Face layout).
"""
from __future__ import annotations

import json
import math
import shutil
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
from tokenizers import Tokenizer, processors

from .. import files
from ..config import ModelConfig
from ..model import Transformer
from . import data as D
from .bpe import special_ids, train_bpe
from .distill import greedy_continue
from .export import export
from .objective import joint_loss


@dataclass
class TrainConfig:
    # model
    vocab_size: int = 4096
    hidden_size: int = 256
    intermediate_size: int = 704
    num_hidden_layers: int = 6
    num_attention_heads: int = 4
    num_key_value_heads: int = 2
    rope_theta: float = 10000.0
    max_position_embeddings: int = 512
    infer_block_size: int = 8  # written to config.json as the decoding default
    # objective / data
    block_size: int = 16  # training block
    seq_len: int = 256
    batch_size: int = 16
    diff_weight: float = 0.3
    heldout_percent: float = 3.0
    data_root: str | None = None  # None: the running interpreter's stdlib
    init_from: str | None = None  # another run folder: start from its latest weights (fresh optimiser)
    # self-distillation: from `distill_start` on, `distill_frac` of each batch is real prefixes
    # continued greedily by the current model (pool regenerated every `distill_every` steps)
    distill_start: int = -1  # -1: off
    distill_frac: float = 0.5
    distill_every: int = 8
    distill_ar_loss: bool = True  # False: no AR loss on generated tokens (diffusion stream only)
    # optimiser
    steps: int = 2000
    lr: float = 2e-3
    min_lr_ratio: float = 0.1
    warmup: int = 100
    weight_decay: float = 0.1
    beta2: float = 0.95
    grad_clip: float = 1.0
    seed: int = 0
    # bookkeeping
    ckpt_every: int = 100
    eval_every: int = 100
    eval_batches: int = 4
    bf16: bool = True
    threads: int | None = None

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown training settings: {', '.join(sorted(unknown))}")
        return cls(**d)

    def check(self):
        if self.seq_len % self.block_size:
            raise ValueError(f"seq_len={self.seq_len} is not a multiple of block_size={self.block_size}")
        if self.seq_len > self.max_position_embeddings:
            raise ValueError(f"seq_len={self.seq_len} exceeds max_position_embeddings={self.max_position_embeddings}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(f"hidden_size={self.hidden_size} is not a multiple of num_attention_heads")
        if not 0 <= self.distill_frac <= 1:
            raise ValueError(f"distill_frac={self.distill_frac}: must be in [0, 1]")


def model_config_dict(tc: TrainConfig, ids: dict[str, int]) -> dict:
    """The config.json of the model being trained, in the NLD checkpoint format."""
    return {
        "architectures": ["NemotronLabsDiffusionModel"],
        "model_type": "nemotron_labs_diffusion",
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_act": "silu",
        "dlm_paradigm": "bidirectional",
        "vocab_size": tc.vocab_size,
        "hidden_size": tc.hidden_size,
        "intermediate_size": tc.intermediate_size,
        "num_hidden_layers": tc.num_hidden_layers,
        "num_attention_heads": tc.num_attention_heads,
        "num_key_value_heads": tc.num_key_value_heads,
        "head_dim": tc.hidden_size // tc.num_attention_heads,
        "rms_norm_eps": 1e-5,
        "max_position_embeddings": tc.max_position_embeddings,
        "rope_parameters": {"rope_type": "default", "rope_theta": tc.rope_theta},
        "tie_word_embeddings": False,
        "mask_token_id": ids["<|mask|>"],
        "eos_token_id": [ids["<|im_end|>"], ids["<|endoftext|>"]],
        "bos_token_id": ids["<|endoftext|>"],
        "pad_token_id": ids["<|endoftext|>"],
        "block_size": tc.infer_block_size,
        "train_block_size": tc.block_size,
        "train_seq_len": tc.seq_len,
        "torch_dtype": "bfloat16",
    }


# -- data preparation ---------------------------------------------------------------------------
def _atomic_torch_save(obj, path: Path):
    with files.atomic_path(path) as tmp:
        torch.save(obj, tmp)


def prepare(tc: TrainConfig, run_dir: Path) -> tuple[Tokenizer, dict]:
    """Tokenizer and token streams of the run, built once and cached in the run folder."""
    tok_path, data_path = run_dir / "tokenizer.json", run_dir / "tokens.pt"
    if tok_path.is_file() and data_path.is_file():
        return Tokenizer.from_file(str(tok_path)), torch.load(data_path)
    train, held = D.read_split(tc.data_root, tc.heldout_percent)
    tok = train_bpe((f.text for f in train), vocab_size=tc.vocab_size)
    ids = special_ids(tok)
    eot = ids["<|endoftext|>"]
    # `encode(text)` starts a document the way training streams do: after <|endoftext|>.
    tok.post_processor = processors.TemplateProcessing(single="<|endoftext|> $A", special_tokens=[("<|endoftext|>", eot)])
    streams = {"train": D.encode_stream(tok, train, eot), "heldout": D.encode_stream(tok, held, eot),
               "train_files": len(train), "heldout_files": [f.rel for f in held]}
    run_dir.mkdir(parents=True, exist_ok=True)
    _atomic_torch_save(streams, data_path)
    files.write_text(tok_path, tok.to_str())
    return tok, streams


# -- the loop -----------------------------------------------------------------------------------
def lr_at(tc: TrainConfig, step: int) -> float:
    if step < tc.warmup:
        return tc.lr * (step + 1) / tc.warmup
    frac = min(1.0, (step - tc.warmup) / max(1, tc.steps - tc.warmup))
    return tc.lr * (tc.min_lr_ratio + (1 - tc.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * frac)))


def build_model(tc: TrainConfig, ids: dict[str, int]) -> Transformer:
    torch.manual_seed(tc.seed)
    model = Transformer(ModelConfig.from_dict(model_config_dict(tc, ids), "trainer"), backend="torch")
    std = 0.02
    with torch.no_grad():
        # Per checkpoint tensor (row views of the fused qkv / gate-up weights), in the unfused
        # order: the same seed draws the same weights as before the weights were fused.
        for name, p in model.checkpoint_state().items():
            if p.dim() == 2:
                # Residual-branch outputs scaled down with depth (GPT-2 style) for a stable start.
                scale = 1 / math.sqrt(2 * tc.num_hidden_layers) if name.endswith(("o_proj.weight", "down_proj.weight")) else 1.0
                p.normal_(0, std * scale)
    return model


def make_optimizer(model, tc: TrainConfig):
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": tc.weight_decay},
                              {"params": no_decay, "weight_decay": 0.0}], lr=tc.lr, betas=(0.9, tc.beta2))


def _autocast(tc: TrainConfig):
    return torch.autocast("cpu", dtype=torch.bfloat16, enabled=tc.bf16)


class Trainer:
    def __init__(self, tc: TrainConfig, run_dir: str | Path, progress: bool = True):
        tc.check()
        self.tc, self.run_dir, self.progress = tc, Path(run_dir), progress
        if tc.threads:
            torch.set_num_threads(tc.threads)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        meta = self.run_dir / "meta.json"
        if meta.is_file():
            old = json.loads(meta.read_text())
            # Safe to change on resume (the schedule follows `steps`; distillation settings only matter
            # from their start step on).
            keep = {"steps", "ckpt_every", "eval_every", "threads", "distill_start", "distill_frac", "distill_every"}
            diff = {k for k in old if k not in keep and old[k] != asdict(tc).get(k)}
            if diff:
                raise ValueError(f"{meta}: run folder was made with different settings ({', '.join(sorted(diff))}); "
                                 "use a new folder or the same settings")
        files.write_json(meta, asdict(tc), indent=2, sort_keys=True)
        src = Path(tc.init_from) if tc.init_from else None
        if src is not None:
            if not (src / "ckpt.pt").is_file():
                raise D.DataError(f"init_from={src}: no ckpt.pt in that run folder")
            for name in ("tokenizer.json", "tokens.pt"):  # same tokenizer and streams as the source run
                if not (self.run_dir / name).is_file():
                    shutil.copyfile(src / name, self.run_dir / name)
        self.tok, self.streams = prepare(tc, self.run_dir)
        self.ids = special_ids(self.tok)
        self.model = build_model(tc, self.ids)
        self.opt = make_optimizer(self.model, tc)
        self.step = 0
        self.pool: tuple[torch.Tensor, int] | None = None  # (distilled sequences, prefix length)
        ckpt = self.run_dir / "ckpt.pt"
        if src is not None and not ckpt.is_file():
            self.model.load_state_dict(torch.load(src / "ckpt.pt")["model"])
        if ckpt.is_file():
            state = torch.load(ckpt)
            self.model.load_state_dict(state["model"])
            self.opt.load_state_dict(state["opt"])
            self.step = state["step"]
            self.pool = state.get("pool")

    # -- batches --------------------------------------------------------------------------
    def _distill_pool(self, step: int) -> tuple[torch.Tensor, int]:
        """Sequences for steps [step, step + distill_every): real prefixes, greedy continuations."""
        tc = self.tc
        per_step = round(tc.batch_size * tc.distill_frac)
        g = torch.Generator().manual_seed(tc.seed * 7919 + step)
        real = D.sample_windows(self.streams["train"], per_step * tc.distill_every, tc.seq_len, tc.seed + 1, step)
        P = int(torch.randint(tc.seq_len // 8, tc.seq_len // 2 + 1, (1,), generator=g))
        self.model.eval()
        with _autocast(tc):
            seqs = greedy_continue(self.model, real[:, :P], tc.seq_len, forbid=(self.ids["<|mask|>"],))
        self.model.train()
        return seqs, P

    def batch(self, step: int) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token windows [b, N] and which AR targets count (None: all)."""
        tc = self.tc
        if tc.distill_start < 0 or step < tc.distill_start or tc.distill_frac == 0:
            return D.sample_windows(self.streams["train"], tc.batch_size, tc.seq_len, tc.seed, step), None
        per_step = round(tc.batch_size * tc.distill_frac)
        k = (step - tc.distill_start) % tc.distill_every
        if k == 0 or self.pool is None:
            self.pool = self._distill_pool(step - k)
        seqs, P = self.pool
        gen = seqs[k * per_step:(k + 1) * per_step]
        real = D.sample_windows(self.streams["train"], tc.batch_size - per_step, tc.seq_len, tc.seed, step)
        x = torch.cat([real, gen])
        if tc.distill_ar_loss:
            return x, None
        keep = torch.ones(tc.batch_size, tc.seq_len - 1, dtype=torch.bool)
        keep[len(real):, P - 1:] = False  # target index j predicts token j+1; generated from P on
        return x, keep

    # -- evaluation -----------------------------------------------------------------------
    @torch.no_grad()
    def evaluate(self) -> dict:
        tc = self.tc
        self.model.eval()
        ar, diff = [], []
        for i in range(tc.eval_batches):
            x = D.sample_windows(self.streams["heldout"], tc.batch_size, tc.seq_len, 12345, i)
            with _autocast(tc):
                lp = joint_loss(self.model, x, tc.block_size, torch.Generator().manual_seed(i),
                                diff_weight=tc.diff_weight)
            ar.append(lp.ar_ce)
            diff.append(lp.diff_ce)
        self.model.train()
        return {"heldout_ar_ce": sum(ar) / len(ar), "heldout_diff_ce": sum(diff) / len(diff)}

    # -- checkpointing --------------------------------------------------------------------
    def save(self):
        _atomic_torch_save({"model": self.model.state_dict(), "opt": self.opt.state_dict(), "step": self.step,
                            "pool": self.pool, "config": asdict(self.tc)}, self.run_dir / "ckpt.pt")
        export(self.model, self.tok, self.run_dir / "export", {"trained_steps": self.step})

    def log(self, rec: dict):
        with open(self.run_dir / "log.jsonl", "a") as f:
            f.write(json.dumps(rec) + "\n")

    def train_step(self, step: int) -> dict:
        tc = self.tc
        x, ar_keep = self.batch(step)
        for group in self.opt.param_groups:
            group["lr"] = lr_at(tc, step)
        with _autocast(tc):
            lp = joint_loss(self.model, x, tc.block_size, torch.Generator().manual_seed(tc.seed * 31337 + step),
                            diff_weight=tc.diff_weight, ar_keep=ar_keep)
        self.opt.zero_grad(set_to_none=True)
        lp.total.backward()
        gnorm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), tc.grad_clip)
        self.opt.step()
        return {"step": step, "loss": lp.total.item(), "ar_ce": lp.ar_ce, "diff_ce": lp.diff_ce,
                "lr": lr_at(tc, step), "gnorm": float(gnorm)}

    def run(self, max_minutes: float | None = None) -> Transformer:
        """Train from the current step to `steps`; checkpoint + export every `ckpt_every` steps and at
        the end (or when `max_minutes` of wall time have passed)."""
        from tqdm import tqdm  # noqa: PLC0415

        tc = self.tc
        self.model.train()
        t0 = time.time()
        bar = tqdm(total=tc.steps, initial=self.step, disable=not self.progress, dynamic_ncols=True)
        while self.step < tc.steps:
            rec = self.train_step(self.step)
            self.step += 1
            rec["elapsed_s"] = round(time.time() - t0, 1)
            if self.step % tc.eval_every == 0 or self.step == tc.steps:
                rec.update(self.evaluate())
            self.log(rec)
            bar.update(1)
            bar.set_postfix(loss=f"{rec['loss']:.3f}", ar=f"{rec['ar_ce']:.3f}", diff=f"{rec['diff_ce']:.3f}")
            out_of_time = max_minutes is not None and time.time() - t0 > max_minutes * 60
            if self.step % tc.ckpt_every == 0 or self.step == tc.steps or out_of_time:
                self.save()
            if out_of_time:
                break
        bar.close()
        self.model.eval()
        return self.model
