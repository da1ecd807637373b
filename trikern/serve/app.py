"""The HTTP layer: Starlette routes in OpenAI's shapes over one `Engine`.

Routes: POST /v1/chat/completions, POST /v1/completions (JSON, or SSE with `stream: true`),
GET /v1/models, GET /health, GET /metrics. Every error is an OpenAI error object with a 4xx status
(5xx only for faults of the server itself, never with a traceback). No decoding happens here: a
request becomes a `Work`, the engine runs it (engine.py one at a time, batch_engine.py several
together: `max_batch`), and its events become a response.

A streamed response starts only once the request's first event arrives, so a request the Model
refuses (bad option, prompt over the context) is a 400 even when streaming was asked for.
"""
from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request as HTTPRequest
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from .batch_engine import BatchEngine
from .engine import Engine, EngineClosed, Job, QueueFull
from .metrics import CONTENT_TYPE, Metrics
from .protocol import APIError, Request, chunk, client_error, completion_body, new_id, now, parse_chat, \
    parse_completion, short, usage

log = logging.getLogger("trikern.serve")


def error_response(e: APIError) -> JSONResponse:
    return JSONResponse(e.body(), status_code=e.status, headers=e.headers)


def _server_error(message: str = "internal server error; see the server log") -> APIError:
    return APIError(500, message, type="server_error", code="internal_error")


def _event_error(e: Exception, req: Request) -> APIError:
    if isinstance(e, EngineClosed):
        return APIError(503, str(e), type="server_error", code="shutting_down")
    if isinstance(e, ValueError):
        return client_error(e, req)
    return _server_error()


class ServerConfig:
    def __init__(self, model_name: str, default_mode: str, api_key: str | None, max_body_bytes: int,
                 default_max_tokens: int, context_length: int, modes: tuple[str, ...]):
        self.model_name, self.default_mode, self.api_key = model_name, default_mode, api_key
        self.max_body_bytes, self.default_max_tokens = max_body_bytes, default_max_tokens
        self.context_length, self.modes = context_length, modes


async def read_json(request: HTTPRequest, limit: int):
    """The body as JSON, read at most `limit` bytes far (413 past it, chunked bodies included)."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > limit:
        raise APIError(413, f"request body is {length} bytes; the limit is {limit}", code="request_too_large")
    data = bytearray()
    try:
        async for part in request.stream():
            data += part
            if len(data) > limit:
                raise APIError(413, f"request body is over the limit of {limit} bytes", code="request_too_large")
    except ClientDisconnect:  # gone before the body arrived: answered to nobody, but not a server fault
        raise APIError(400, "the client disconnected while sending the body", code="client_disconnected") from None
    try:
        return json.loads(bytes(data))
    except (ValueError, RecursionError) as e:  # JSONDecodeError and bad UTF-8 are ValueErrors
        raise APIError(400, f"the request body is not valid JSON: {e}", code="invalid_json") from None


async def _cancel_on_disconnect(receive, engine: Engine, job: Job):
    """Wait for the client to go away, then cancel its job (runs until the response is done)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            engine.cancel(job)
            return


def _sse(obj) -> bytes:
    return b"data: " + json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode() + b"\n\n"


class EventStream(StreamingResponse):
    """SSE over the job's events; `on_close` runs however the stream ends (done, error, client gone)."""

    def __init__(self, events, on_close):
        super().__init__(events, media_type="text/event-stream",
                         headers={"cache-control": "no-cache", "x-accel-buffering": "no"})
        self.on_close = on_close

    async def __call__(self, scope, receive, send):
        # Not StreamingResponse's own disconnect handling: the request's watcher already listens on
        # `receive` and cancels the job, which ends `events`.
        try:
            await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
            async for data in self.body_iterator:
                await send({"type": "http.response.body", "body": data, "more_body": True})
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        finally:
            self.on_close()


def create_app(model, cfg: ServerConfig, max_queue: int, metrics: Metrics | None = None, max_batch: int = 1,
               batch_context: int | None = None, cuda_graphs: bool | None = None) -> Starlette:
    """`max_batch` 1: one generation at a time (Engine); more: up to that many decode together
    (BatchEngine, each in a cache region of `batch_context` tokens). `cuda_graphs=False`: every
    decode step eager on CUDA."""
    metrics = metrics or Metrics()
    engine = Engine(model, max_queue, metrics, cuda_graphs) if max_batch == 1 else \
        BatchEngine(model, max_queue, metrics, max_batch=max_batch, context=batch_context, cuda_graphs=cuda_graphs)

    def check_auth(request: HTTPRequest):
        if cfg.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, token = header.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), cfg.api_key.encode()):
            raise APIError(401, "missing or wrong API key: send 'Authorization: Bearer <key>'",
                           code="invalid_api_key", type="authentication_error",
                           headers={"WWW-Authenticate": "Bearer"})

    def counted(route: str, handler):
        """Auth, the OpenAI error shape, and the requests counter around one route."""
        async def endpoint(request: HTTPRequest):
            try:
                if route != "/health":
                    check_auth(request)
                response = await handler(request)
            except APIError as e:
                response = error_response(e)
            metrics.requests.inc(route=route, status=response.status_code)
            return response
        return endpoint

    async def health(request):
        return JSONResponse({"status": "ok"})

    async def metrics_route(request):
        return Response(metrics.render(), media_type=CONTENT_TYPE)

    def model_card() -> dict:
        return {"id": cfg.model_name, "object": "model", "created": 0, "owned_by": "trikern",
                "trikern": {"modes": list(cfg.modes), "default_mode": cfg.default_mode,
                            "context_length": cfg.context_length}}

    async def list_models(request):
        return JSONResponse({"object": "list", "data": [model_card()]})

    async def get_model(request):
        name = request.path_params["name"]
        if name != cfg.model_name:
            raise APIError(404, f"model {short(name)} does not exist: this server serves {cfg.model_name!r}",
                           param="model", code="model_not_found")
        return JSONResponse(model_card())

    def generation(parse):
        async def handler(request: HTTPRequest):
            body = await read_json(request, cfg.max_body_bytes)
            req = parse(body, cfg.model_name, cfg.default_mode, cfg.default_max_tokens)
            try:
                job = engine.submit(req.work)
            except QueueFull as e:
                raise APIError(429, f"the server is busy: {e}; retry shortly", code="queue_full",
                               type="rate_limit_error", headers={"Retry-After": "1"}) from None
            except EngineClosed as e:
                raise APIError(503, str(e), type="server_error", code="shutting_down") from None
            watcher = asyncio.create_task(_cancel_on_disconnect(request.receive, engine, job))
            handed_off = False
            try:
                kind, value = await job.next()
                if kind == "error":
                    raise _event_error(value, req)
                rid, created = new_id(req.kind), now()
                if req.stream:
                    handed_off = True

                    def close():
                        watcher.cancel()
                        engine.cancel(job)  # a no-op once the job is done
                    return EventStream(_stream_events(req, job, rid, created, kind, value), close)
                while kind == "piece":  # the result carries the whole text
                    kind, value = await job.next()
                if kind == "error":
                    raise _event_error(value, req)
                if kind == "cancelled":  # the client is gone; this answer reaches nobody
                    return Response(status_code=499)
                return JSONResponse(completion_body(req, rid, created, value, job.started - job.submitted))
            finally:
                if not handed_off:
                    watcher.cancel()
                    engine.cancel(job)
        return handler

    async def _stream_events(req: Request, job: Job, rid: str, created: int, kind, value):
        if req.kind == "chat":  # OpenAI opens a chat stream with the role
            yield _sse(chunk(req, rid, created, first=True))
        while kind == "piece":
            yield _sse(chunk(req, rid, created, text=value))
            kind, value = await job.next()
        if kind == "cancelled":
            return
        if kind == "error":  # after a 200 was sent: the error travels as an event, as OpenAI's does
            yield _sse(_event_error(value, req).body())
            yield b"data: [DONE]\n\n"
            return
        yield _sse(chunk(req, rid, created, finish_reason=value.finish_reason))
        if req.include_usage:
            yield _sse(chunk(req, rid, created, final_usage=True, usage_=usage(value, job.started - job.submitted)))
        yield b"data: [DONE]\n\n"

    async def not_found(request, exc: HTTPException):
        e = APIError(exc.status_code, f"{request.method} {request.url.path}: {exc.detail}",
                     code="not_found" if exc.status_code == 404 else None)
        metrics.requests.inc(route="other", status=exc.status_code)
        return error_response(e)

    async def crashed(request, exc: Exception):
        log.error("unhandled error on %s %s", request.method, request.url.path, exc_info=exc)
        metrics.requests.inc(route="other", status=500)
        return error_response(_server_error())

    @contextlib.asynccontextmanager
    async def lifespan(app):
        engine.start()
        try:
            yield
        finally:
            engine.close()

    routes = [
        Route("/health", counted("/health", health), methods=["GET"]),
        Route("/metrics", counted("/metrics", metrics_route), methods=["GET"]),
        Route("/v1/models", counted("/v1/models", list_models), methods=["GET"]),
        Route("/v1/models/{name:path}", counted("/v1/models", get_model), methods=["GET"]),
        Route("/v1/chat/completions", counted("/v1/chat/completions", generation(parse_chat)), methods=["POST"]),
        Route("/v1/completions", counted("/v1/completions", generation(parse_completion)), methods=["POST"]),
    ]
    app = Starlette(routes=routes, lifespan=lifespan,
                    exception_handlers={HTTPException: not_found, Exception: crashed})
    app.state.engine = engine
    app.state.metrics = metrics
    return app
