"""A full decode with backend="triton" (under TRITON_INTERPRET=1 on CPU) gives the same tokens as
backend="torch", in every mode."""
import os

import pytest
import torch
from decode_helpers import run
from util import random_model, tiny_config

from trikern.decode import MODES


@pytest.fixture(scope="module")
def models():
    if not torch.cuda.is_available() and os.environ.get("TRITON_INTERPRET", "0") in ("", "0"):
        pytest.skip("backend='triton' on CPU needs TRITON_INTERPRET=1 (tests/conftest.py sets it)")
    cfg = tiny_config(num_hidden_layers=1, max_position_embeddings=64)
    return random_model(cfg, seed=6, backend="torch"), random_model(cfg, seed=6, backend="triton")


@pytest.mark.parametrize("mode", MODES)
def test_triton_decode_equals_torch(models, mode):
    ref, tri = models
    kw = dict(max_new_tokens=7, block_size=4)
    want, want_stats, _ = run(ref, [1, 2, 3], mode, **kw)
    got, got_stats, _ = run(tri, [1, 2, 3], mode, **kw)
    assert got == want
    if mode != "auto":  # auto's choice of strategy follows measured step times
        assert got_stats.forwards == want_stats.forwards
