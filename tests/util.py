"""Test helpers: tiny in-memory models (the real NLD config keys, scaled down), and the environment
of a trikern child process."""
from __future__ import annotations

import os
import re
import select
import time

import torch

from trikern.config import ModelConfig
from trikern.configs import config_dict
from trikern.model import Transformer

# A child process (CLI, REPL, server, bench) runs what a user runs: no TRITON_INTERPRET. And one torch
# thread, as the in-process tests run (conftest): with `make test`'s two workers on two cores, a
# child's second OpenMP thread waits at every op's barrier for a core the other worker holds, and
# its decoding slows 10-50x (seen: a REPL reply at 10 lines in 120 s).
CHILD_ENV = {**{k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}, "OMP_NUM_THREADS": "1"}


def nld_config_dict(**overrides) -> dict:
    """The published 3B config.json with tiny dimensions (real keys, YaRN rope, llama-4 scaling)."""
    d = config_dict("nld-3b")
    d.update(hidden_size=64, intermediate_size=96, num_hidden_layers=2, num_attention_heads=4,
             num_key_value_heads=2, head_dim=32, vocab_size=160, mask_token_id=100, eos_token_id=11,
             max_position_embeddings=512, block_size=8)
    d.update(overrides)
    return d


def tiny_config(**overrides) -> ModelConfig:
    return ModelConfig.from_dict(nld_config_dict(**overrides))


def random_model(cfg: ModelConfig | None = None, seed: int = 0, dtype=torch.float32, backend="torch",
                 std: float = 0.2) -> Transformer:
    """A randomly initialised model; std large enough that logits are far from uniform."""
    cfg = cfg or tiny_config()
    g = torch.Generator().manual_seed(seed)
    m = Transformer(cfg, backend=backend)
    with torch.no_grad():
        # Per checkpoint tensor (row views of the fused weights): the same draws for every layout.
        for name, p in m.checkpoint_state().items():
            if name.endswith("layernorm.weight") or name == "norm.weight":
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(std * torch.randn(p.shape, generator=g))
    return m.to(dtype).eval()


class PtyReader:
    """What a child on a pseudo-terminal has written so far (`seen`), read as it comes."""

    def __init__(self, fd: int, timeout: float = 60):
        self.fd, self.timeout, self.seen = fd, timeout, b""

    def read_until(self, pattern, start: int = 0, timeout: float | None = None) -> bool:
        """Read until `pattern` (bytes regex) occurs in `seen[start:]`; False at the timeout or EOF."""
        end = time.time() + (self.timeout if timeout is None else timeout)
        while time.time() < end:
            if re.search(pattern, self.seen[start:]):
                return True
            if select.select([self.fd], [], [], 0.1)[0]:
                try:
                    self.seen += os.read(self.fd, 4096)
                except OSError:
                    break
        return False


def aot_rows(module: str, picks: str) -> list[list[str]]:
    """AOT-compile a few of `trikern.kernels.<module>`'s variants for sm_80 and sm_90 in a process
    without TRITON_INTERPRET (the interpreter replaces the compiler); `picks` is a Python expression
    over the arch's variant list `vs`. One row per compile: arch, kernel, registers, spill bytes,
    tensor-core family, status."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path
    root = Path(__file__).resolve().parents[1]
    script = f"""
        import importlib
        from trikern.kernels import aot
        M = importlib.import_module("trikern.kernels.{module}")
        for arch in (80, 90):
            vs = M.aot_variants(arch)
            for v in {picks}:
                r = aot.compile_variant(v, arch)
                print(arch, v.kernel_name, r.registers, r.spill_bytes, r.family, r.problem or "ok")
    """
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = str(root)
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(script)], env=env, cwd=root, capture_output=True,
                         text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-3000:]
    return [line.split() for line in out.stdout.splitlines()]
