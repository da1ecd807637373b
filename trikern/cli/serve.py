"""`trikern serve`: options, model loading, then uvicorn (trikern/serve/launch.py) until SIGINT / SIGTERM."""
from __future__ import annotations

import logging
import os
import sys

from ..decode import MODES
from ..serve import launch
from ..serve.launch import DEFAULT_MAX_TOKENS
from .options import UsageError, add_model_options, load_model_from_args

# The default --batch-context cap: every region of the batch holds this many tokens whatever the
# requests are (a 262k-token model context x --max-batch regions would not fit a GPU).
BATCH_CONTEXT = 8192


def add_parser(sub):
    p = sub.add_parser(
        "serve", help="OpenAI-compatible HTTP server (needs the serve extra: pip install 'trikern[serve]')",
        description="Serve one model over an OpenAI-compatible HTTP API: POST /v1/chat/completions, "
        "POST /v1/completions (JSON or SSE streaming), GET /v1/models, /health, /metrics. The decoding mode "
        "is a request field ('mode' in the body); --mode sets the default.")
    add_model_options(p)
    p.add_argument("--host", default="127.0.0.1",
                   help="address to bind (default: 127.0.0.1, loopback only; 0.0.0.0 exposes the server)")
    p.add_argument("--port", type=int, default=8000, help="TCP port (default: 8000)")
    p.add_argument("--mode", default="ar", choices=MODES, help="mode of requests that name none (default: ar)")
    p.add_argument("--api-key", default=os.environ.get("TRIKERN_API_KEY"), metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on every route but /health "
                   "(default: $TRIKERN_API_KEY; unset: no authentication)")
    p.add_argument("--max-batch", type=int, default=4, metavar="N",
                   help="requests decoded together, one batched forward per step (default: 4; 1: one at a time, "
                   "as before batching). One mode and block size per batch: a request for another waits until the "
                   "batch drains; draft-tree requests (tree_nodes) run alone")
    p.add_argument("--batch-context", type=int, default=None, metavar="N",
                   help=f"tokens (prompt + max_tokens) of one batched request: each of the --max-batch cache regions "
                   f"holds this many; a request needing more runs alone (default: the model's context, at most "
                   f"{BATCH_CONTEXT})")
    p.add_argument("--no-cuda-graphs", action="store_true",
                   help="run every decode step eagerly on CUDA, one request or a batch (vLLM's --enforce-eager); "
                   "default: CUDA graphs on CUDA")
    p.add_argument("--max-queue", type=int, default=16, metavar="N",
                   help="requests that may wait beyond the free batch slots; more get 429 (default: 16)")
    p.add_argument("--max-body-bytes", type=int, default=1 << 20, metavar="N",
                   help="largest request body accepted; larger gets 413 (default: 1 MiB)")
    p.add_argument("--default-max-tokens", type=int, default=DEFAULT_MAX_TOKENS, metavar="N",
                   help=f"token budget of requests without max_tokens (default: {DEFAULT_MAX_TOKENS}; "
                   "generation always stops at the end of the context)")
    p.add_argument("--served-model-name", default=None, metavar="NAME",
                   help="model id clients send and /v1/models lists (default: the checkpoint folder's name)")
    p.add_argument("--log-level", default="info", choices=["critical", "error", "warning", "info", "debug"])
    return p


def check(a):
    """UsageError for an option out of range."""
    if not 1 <= a.port <= 65535:
        raise UsageError(f"--port {a.port}: expected 1..65535")
    if a.max_batch < 1:
        raise UsageError(f"--max-batch {a.max_batch}: expected >= 1")
    if a.batch_context is not None and a.batch_context < 2:
        raise UsageError(f"--batch-context {a.batch_context}: expected >= 2")
    if a.max_queue < 0:
        raise UsageError(f"--max-queue {a.max_queue}: expected >= 0")
    if a.max_body_bytes < 1:
        raise UsageError(f"--max-body-bytes {a.max_body_bytes}: expected >= 1")
    if a.default_max_tokens < 1:
        raise UsageError(f"--default-max-tokens {a.default_max_tokens}: expected >= 1")
    if a.api_key is not None and not a.api_key.strip():
        raise UsageError("--api-key is empty")
    if a.served_model_name is not None and not a.served_model_name.strip():
        raise UsageError("--served-model-name is empty")


def run(a) -> int:
    check(a)
    try:
        launch.check_extra()
    except ImportError as e:
        print(f"trikern serve: error: {e.name or e} is not installed; install the server extra: "
              f"pip install 'trikern[serve]'", file=sys.stderr)
        return 2
    logging.basicConfig(level=a.log_level.upper(), format="%(levelname)s:     %(name)s: %(message)s")
    try:
        # Batched auto's step costs at 2, 4, ... and --max-batch sequences (linear in between).
        sizes = sorted({2 ** k for k in range(1, a.max_batch.bit_length())} | {a.max_batch}) if a.max_batch > 1 else []
        model = load_model_from_args(a, batch_sizes=sizes)
        model.check_options(mode=a.mode)  # e.g. --mode spec-linear on an AR-only checkpoint
    except (ValueError, FileNotFoundError) as e:
        print(f"trikern serve: error: {e}", file=sys.stderr)
        return 2
    launch.run(model, model_name=a.served_model_name or launch.served_name(a.model, model.path), default_mode=a.mode,
               modes=MODES, host=a.host, port=a.port, api_key=a.api_key, max_queue=a.max_queue,
               max_body_bytes=a.max_body_bytes, default_max_tokens=a.default_max_tokens, log_level=a.log_level,
               max_batch=a.max_batch, cuda_graphs=False if a.no_cuda_graphs else None,
               batch_context=min(a.batch_context or BATCH_CONTEXT, model.cfg.max_position_embeddings))
    return 0
