"""Test session set-up: Triton kernels run under the CPU interpreter (set before triton imports), and
the chat checkpoint (tests/synth.py `write_chat_checkpoint`) that the API, CLI and bad-input tests share."""
import os
import tempfile

os.environ.setdefault("TRITON_INTERPRET", "1")
# Tuning results (kernel configs, auto's step-cost profile) of test runs never land in the checkout.
os.environ.setdefault("TRIKERN_AUTOTUNE_DIR", tempfile.mkdtemp(prefix="trikern-autotune-"))

import torch  # noqa: E402

# Tiny shapes: one thread per pytest-xdist worker is faster than two fighting over 2 cores.
torch.set_num_threads(1)


import pytest  # noqa: E402


@pytest.fixture(scope="session")
def chat_ckpt(tmp_path_factory):
    """A tiny NLD checkpoint with a tokenizer and chat template, written once per session (read only)."""
    from synth import write_chat_checkpoint  # noqa: PLC0415 - after the environment above is set

    return write_chat_checkpoint(tmp_path_factory.mktemp("chat"))
