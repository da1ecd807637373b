"""The `cpu` backend: the model's ops made fast on the CPU at decoding's batch sizes.

Each module implements an op whose spec is a PyTorch reference in trikern/kernels/ and is tested
against it (tests/test_cpu_backend.py, tests/test_cpu_linear.py): `linear` (bf16 and fp32 matmuls
on a weight laid out once), `norm` (rmsnorm / add_rmsnorm), `attention` (over the committed cache
entries only, fp32 batched matmuls, each pattern's chunk mask kept per shape). rope and swiglu
have no CPU version: their references are already a few ops. kernels/ops.py routes to them when the
backend is "cpu" ("auto" on CPU tensors).

The modules are not re-exported here, so `from trikern.kernels.cpu import linear` is the module (its
settings are module globals).
"""
