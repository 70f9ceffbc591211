"""The OpenAI-compatible HTTP server (FastAPI): routes, auth, body limits, metrics, chat page.

Why this module exists: it is the one place that wires the HTTP surface to the Scheduler.
Requests go: API key (constant-time compare) -> body read with a byte limit -> strict JSON
validation -> checks against the model (prompts.py) -> one scheduler slot per choice
(generation.py). Every failure is an OpenAI-shaped error with a 4xx status (errors.py).
"""

from __future__ import annotations

import hmac
import time
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from fastapi import Depends, FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, PlainTextResponse, StreamingResponse

from .chat_template import ChatTemplate
from .errors import APIError, install_error_handlers
from .generation import Generation, complete, stream
from .metrics import Metrics
from .prompts import plan_chat, plan_completion
from .schemas import ChatCompletionRequest, CompletionRequest, parse_body

WEB_DIR = Path(__file__).parent / "web"
_ROUTES = {"/", "/health", "/metrics", "/v1/models", "/v1/completions", "/v1/chat/completions"}


class _CountRequests:
    """ASGI middleware: count every HTTP response by path and status for /metrics."""

    def __init__(self, app: Any, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500  # what the client gets if the app raises before starting a response

        async def send_and_record(message: dict) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_and_record)
        finally:
            path = scope.get("path", "")
            label = path if path in _ROUTES else ("/v1/models/{id}" if path.startswith("/v1/models/") else "other")
            self.metrics.count_request(label, status)


async def read_body(request: Request, limit: int) -> bytes:
    """The request body, refusing (413) more than `limit` bytes by header or by actual count."""
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise APIError(400, f"Invalid Content-Length header {declared!r}.", "invalid_request") from None
        if size > limit:
            raise APIError(413, f"The request body is {size} bytes; the limit is {limit} bytes.", "request_too_large")
    chunks, total = [], 0
    async for chunk in request.stream():
        total += len(chunk)
        if total > limit:
            raise APIError(413, f"The request body exceeds the limit of {limit} bytes.", "request_too_large")
        chunks.append(chunk)
    return b"".join(chunks)


def _auth(api_key: str | None):
    """A dependency checking `Authorization: Bearer <key>` when a key is configured."""
    expected = api_key.encode() if api_key else None

    async def check(request: Request) -> None:
        if expected is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        # compare_digest: the time taken does not reveal how much of the key matched
        if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), expected):
            raise APIError(401, "Incorrect or missing API key: send 'Authorization: Bearer <key>'.", "invalid_api_key")

    return check


def create_app(engine: Any, *, api_key: str | None = None, max_batch: int = 8, max_queue: int = 64,
               max_body_bytes: int = 1_000_000, model_name: str | None = None, speculative: bool = False,
               scheduler: Any = None) -> FastAPI:
    """The FastAPI app serving `engine`; the scheduler thread runs while the app is up.
    `speculative`: requests that do not set "speculative" draft with the MTP heads.
    `scheduler`: an engine_process.EngineProcess (then `engine` is its EngineInfo) instead of a
    Scheduler thread on `engine`; it starts and stops with the app."""
    name = model_name or engine.name
    tok = engine.tokenizer
    template = ChatTemplate(engine.chat_template, tok.decode_bytes([tok.bos_id]).decode(), tok.decode_bytes([tok.eos_id]).decode(),
                            origin=f"model {name!r}")
    if scheduler is None:
        from ..infer.scheduler import Scheduler  # here: a server with an engine process never loads PyTorch

        scheduler = Scheduler(engine, max_batch=max_batch, max_queue=max_queue, speculative=speculative)
    metrics = Metrics()
    index_html = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    started = int(time.time())

    @asynccontextmanager
    async def lifespan(_: FastAPI):
        scheduler.start()
        try:
            yield
        finally:
            scheduler.stop()

    app = FastAPI(title="nanochat-ternary", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    app.state.scheduler, app.state.metrics, app.state.engine = scheduler, metrics, engine
    install_error_handlers(app)
    app.add_middleware(_CountRequests, metrics=metrics)
    auth = [Depends(_auth(api_key))]

    @app.get("/", include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(index_html)

    @app.get("/health")
    async def health() -> Any:
        body = {"status": "ok", "model": name, "in_flight": scheduler.in_flight,
                "speculative": {"available": scheduler.can_speculate, "default": scheduler.speculative and scheduler.can_speculate}}
        if scheduler.failure:  # the engine has stopped for good: not healthy, whatever else answers
            return JSONResponse({**body, "status": "error", "error": scheduler.failure}, status_code=503)
        return body

    @app.get("/metrics", dependencies=auth)
    async def prometheus() -> PlainTextResponse:
        return PlainTextResponse(metrics.render(scheduler), media_type="text/plain; version=0.0.4; charset=utf-8")

    def model_card() -> dict:
        return {"id": name, "object": "model", "created": started, "owned_by": "nanochat", "context_length": engine.n_ctx}

    @app.get("/v1/models", dependencies=auth)
    async def list_models() -> dict:
        return {"object": "list", "data": [model_card()]}

    @app.get("/v1/models/{model_id:path}", dependencies=auth)
    async def get_model(model_id: str) -> dict:
        if model_id != name:
            raise APIError(404, f"The model '{model_id}' does not exist; this server serves '{name}'.", "model_not_found", "model")
        return model_card()

    async def run(request: Request, job_of) -> Any:
        body = await read_body(request, max_body_bytes)
        job, streaming = job_of(body)
        gen = Generation(job, scheduler, metrics, request)
        gen.submit()
        if streaming:
            return StreamingResponse(stream(gen), media_type="text/event-stream",
                                     headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
        return JSONResponse(await complete(gen))

    @app.post("/v1/completions", dependencies=auth)
    async def completions(request: Request) -> Any:
        def job_of(body: bytes):
            req = parse_body(body, CompletionRequest)
            return plan_completion(req, engine, name), bool(req.stream)

        return await run(request, job_of)

    @app.post("/v1/chat/completions", dependencies=auth)
    async def chat_completions(request: Request) -> Any:
        def job_of(body: bytes):
            req = parse_body(body, ChatCompletionRequest)
            return plan_chat(req, engine, template, name), bool(req.stream)

        return await run(request, job_of)

    return app
