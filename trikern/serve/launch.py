"""Serving one loaded Model: the name clients send, the loopback check, and uvicorn until SIGINT / SIGTERM.

The command line (options, their checks, model loading) is trikern/cli/serve.py; `check_extra` and
`run` import Starlette and uvicorn only when called, so this module imports without the extra.
"""
from __future__ import annotations

import ipaddress
import logging
from pathlib import Path

from ..hub import is_hub_id

DEFAULT_MAX_TOKENS = 1024


def served_name(model_arg: str | None, folder: Path) -> str:
    """The model name clients send: a hub id as given (its folder is a snapshot named by commit
    hash), else the checkpoint folder's name."""
    from ..api import DEFAULT_MODEL  # noqa: PLC0415

    if folder == DEFAULT_MODEL:
        return "trikern-default"
    hub = model_arg is not None and is_hub_id(model_arg) and folder != Path(model_arg)
    return model_arg if hub else folder.name


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_extra() -> None:
    """ImportError when the serve extra (Starlette, uvicorn) is missing."""
    import uvicorn  # noqa: F401, PLC0415

    from . import app  # noqa: F401, PLC0415 - imports Starlette


def run(model, *, model_name: str, default_mode: str, modes: tuple[str, ...], host: str, port: int,
        api_key: str | None, max_queue: int, max_body_bytes: int, default_max_tokens: int, log_level: str,
        max_batch: int = 1, batch_context: int | None = None, cuda_graphs: bool | None = None) -> None:
    """Serve `model` on host:port until SIGINT / SIGTERM."""
    import uvicorn  # noqa: PLC0415

    from .app import ServerConfig, create_app  # noqa: PLC0415 - imports Starlette

    context = model.cfg.max_position_embeddings
    cfg = ServerConfig(model_name=model_name, default_mode=default_mode, api_key=api_key,
                       max_body_bytes=max_body_bytes, default_max_tokens=default_max_tokens,
                       context_length=context, modes=modes)
    if not is_loopback(host) and api_key is None:
        logging.getLogger("trikern.serve").warning(
            "listening on %s without --api-key: anyone who can reach this address can use the model", host)
    app = create_app(model, cfg, max_queue=max_queue, max_batch=max_batch, batch_context=batch_context,
                     cuda_graphs=cuda_graphs)
    # A short graceful-shutdown window: open streams are cancelled by the engine, not waited for.
    uvicorn.run(app, host=host, port=port, log_level=log_level, timeout_graceful_shutdown=5)
