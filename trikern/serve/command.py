"""The `trikern serve` command line: options, model loading, then uvicorn until SIGINT / SIGTERM."""
from __future__ import annotations

import argparse
import ipaddress
import logging
import os
import sys
from pathlib import Path

from ..cli import _load, _model_args
from ..decode.common import MODES
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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="trikern serve",
        description="Serve one model over an OpenAI-compatible HTTP API: POST /v1/chat/completions, "
        "POST /v1/completions (JSON or SSE streaming), GET /v1/models, /health, /metrics. The decoding mode "
        "is a request field ('mode' in the body); --mode sets the default.")
    _model_args(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, loopback only; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--mode", default="ar", choices=MODES, help="mode of requests that name none (default: ar)")
    p.add_argument("--api-key", default=os.environ.get("TRIKERN_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: $TRIKERN_API_KEY; unset: no authentication)")
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="requests that may wait behind the running one; more get 429 (default: 16)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="largest request body accepted; larger gets 413 (default: 1 MiB)")
    p.add_argument("--default-max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"token budget of requests without max_tokens (default: {DEFAULT_MAX_TOKENS}; "
                   "generation always stops at the end of the context)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="model id clients send and /v1/models lists (default: the checkpoint folder's name)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def _check_args(p: argparse.ArgumentParser, a):
    if not 1 <= a.port <= 65535:
        p.error(f"--port {a.port}: expected 1..65535")
    if a.max_queue < 0:
        p.error(f"--max-queue {a.max_queue}: expected >= 0")
    if a.max_body_bytes < 1:
        p.error(f"--max-body-bytes {a.max_body_bytes}: expected >= 1")
    if a.default_max_tokens < 1:
        p.error(f"--default-max-tokens {a.default_max_tokens}: expected >= 1")
    if a.api_key is not None and not a.api_key.strip():
        p.error("--api-key is empty")
    if a.served_model_name is not None and not a.served_model_name.strip():
        p.error("--served-model-name is empty")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def main(argv=None) -> int:
    p = build_parser()
    a = p.parse_args(sys.argv[1:] if argv is None else list(argv))
    _check_args(p, a)
    try:
        import uvicorn  # noqa: PLC0415

        from .app import ServerConfig, create_app  # noqa: PLC0415 - imports Starlette
    except ImportError as e:
        print(f"trikern serve: error: {e.name or e} is not installed; install the server extra: "
              f"pip install 'trikern[serve]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=a.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        model = _load(a)
        model.check_options(mode=a.mode)  # e.g. --mode spec-linear on an AR-only checkpoint
    except (ValueError, FileNotFoundError) as e:
        print(f"trikern serve: error: {e}", file=sys.stderr)
        return 2

    name = a.served_model_name or served_name(a.model, model.path)
    context = model.cfg.max_position_embeddings
    cfg = ServerConfig(model_name=name, default_mode=a.mode, api_key=a.api_key, max_body_bytes=a.max_body_bytes,
                       default_max_tokens=a.default_max_tokens, context_length=context, modes=MODES)
    if not _is_loopback(a.host) and a.api_key is None:
        logging.getLogger("trikern.serve").warning(
            "listening on %s without --api-key: anyone who can reach this address can use the model", a.host)
    app = create_app(model, cfg, max_queue=a.max_queue)
    # A short graceful-shutdown window: open streams are cancelled by the engine, not waited for.
    uvicorn.run(app, host=a.host, port=a.port, log_level=a.log_level, timeout_graceful_shutdown=5)
    return 0
