"""One process-wide count of warm-up work: a CUDA graph captured (decode/runtime.py), a kernel
config benchmarked (kernels/autotune.py), a CPU matmul path timed (the CPU linear chooser).

A decode step during which it moved was not a steady-state step, so its time says nothing about the
strategy's cost (decode/driver.py compares the count before and after each step).
"""
count = 0


def bump():
    """Note one piece of warm-up work."""
    global count
    count += 1
