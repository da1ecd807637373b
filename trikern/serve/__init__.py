"""`trikern serve`: an OpenAI-compatible HTTP server over one Model (the optional `serve` extra).

protocol.py maps OpenAI requests and responses, engine.py runs generations on one decoder thread with
a bounded queue, app.py holds the Starlette routes, metrics.py the Prometheus text, command.py the CLI.
Importing this package needs nothing beyond trikern; `main` says how to install the extra when
Starlette or uvicorn is missing.
"""
from __future__ import annotations


def main(argv=None) -> int:
    from .command import main as run  # noqa: PLC0415 - keep `trikern` usable without the extra
    return run(argv)
