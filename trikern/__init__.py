"""trikern: Triton kernels and decoding loops for tri-mode (AR / diffusion / self-speculation) LMs."""
__version__ = "0.1.0"


def load(path=None, device=None, dtype=None, backend="auto", **kw):
    """Load a checkpoint folder (default: the embedded model) and return a `trikern.api.Model`."""
    from .api import Model  # noqa: PLC0415 - keep `import trikern` light

    return Model.load(path, device=device, dtype=dtype, backend=backend, **kw)
