"""A full decode with backend="triton" (under TRITON_INTERPRET=1 on CPU) gives the same tokens as
backend="torch", in every mode."""

import pytest
from decode_helpers import run, torch_and_triton_models

from trikern.decode import MODES


@pytest.fixture(scope="module")
def models():
    return torch_and_triton_models()


@pytest.mark.parametrize("mode", MODES)
def test_triton_decode_equals_torch(models, mode):
    ref, tri = models
    kw = dict(max_new_tokens=7, block_size=4)
    want, want_stats, _ = run(ref, [1, 2, 3], mode, **kw)
    got, got_stats, _ = run(tri, [1, 2, 3], mode, **kw)
    assert got == want
    if mode != "auto":  # auto's choice of strategy follows measured step times
        assert got_stats.forwards == want_stats.forwards
