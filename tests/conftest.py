"""Test session set-up: Triton kernels run under the CPU interpreter (set before triton imports)."""
import os

os.environ.setdefault("TRITON_INTERPRET", "1")
