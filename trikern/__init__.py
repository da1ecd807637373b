"""trikern: Triton kernels and decoding loops for tri-mode (AR / diffusion / self-speculation) LMs."""
__version__ = "0.1.0"


def load(path=None, device=None, dtype=None, backend="auto", revision=None, **kw):
    """Load a checkpoint folder (default: the embedded model) or a Hugging Face hub id "org/name"
    at `revision` (branch, tag or commit; default: main) and return a `trikern.api.Model`."""
    from .api import Model  # noqa: PLC0415 - keep `import trikern` light

    return Model.load(path, device=device, dtype=dtype, backend=backend, revision=revision, **kw)
