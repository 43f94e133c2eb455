"""`create_app(...)`: the FastAPI app serving the OpenAI and Ollama APIs over one ModelManager.

Middleware, outermost first: CORS (allowlist) -> request metrics -> API keys -> body limit -> routes. The default
model loads in the background at startup; /health answers 503 until it is loaded, so orchestrators wait for it. A
failed load is retried with backoff (1 s doubling to 30 s), and /health turns 200 as soon as a load succeeds, by the
retry or by a request. An unexpected error is logged with an id; its 500 body carries only that id. Errors take the
shape of the API their path belongs to (serve/ops.py `error_body`): Ollama's on /api/*, OpenAI's elsewhere.
"""

from __future__ import annotations

import asyncio
import logging
from contextlib import asynccontextmanager
from typing import Any, Callable

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware
from starlette.types import ASGIApp, Receive, Scope, Send

from protege.config import ServeConfig, parse_keep_alive
from serve.engines.base import EngineError
from serve.metrics import CONTENT_TYPE_LATEST, Metrics
from serve.ops import (Admission, ApiKeyMiddleware, BodyLimitMiddleware, crash_message, engine_error_response,
                       error_response)
from serve.registry import Registry
from serve.service import EngineFactory, KnowledgeFactory, ModelManager, Service

log = logging.getLogger("protege.serve")

PRELOAD_RETRY = (1.0, 30.0)  # seconds: first retry of a failed preload, and the cap of its doubling
ROUTES = {"/", "/health", "/metrics", "/v1/chat/completions", "/v1/completions", "/v1/models", "/v1/embeddings",
          "/api/version", "/api/tags", "/api/show", "/api/ps", "/api/chat", "/api/generate", "/api/embed"}


def default_embedder() -> Any:
    from rag.embed import default_embedder as make

    return make()


def create_app(registry: Registry, engine_factory: EngineFactory, serve_cfg: ServeConfig | None = None, *,
               knowledge_factory: KnowledgeFactory | None = None, embedder_factory: Callable[[], Any] | None = None,
               preload: str | bool = True) -> FastAPI:
    """`preload`: True loads the registry's default model at startup, a model id loads that one, False none."""
    cfg = serve_cfg or ServeConfig()
    metrics = Metrics()
    manager = ModelManager(registry, engine_factory, keep_alive=parse_keep_alive(cfg.keep_alive),
                           max_loaded=cfg.max_loaded_models, metrics=metrics)
    admission = Admission(cfg.parallel, cfg.max_queue, metrics)
    service = Service(manager, knowledge_factory, metrics, admission)
    preload_id = registry.default_id() if preload is True else (preload or None)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        task = None
        reaper = asyncio.create_task(manager.reap())  # keep_alive: unload idle engines when their time is up
        if preload_id:
            async def _load() -> None:
                delay = PRELOAD_RETRY[0]
                while True:
                    try:
                        await manager.get(preload_id)
                    except Exception as e:  # noqa: BLE001 - reported by /health, retried: it may be transient
                        app.state.load_error = (f"loading failed ({type(e).__name__}); retrying in {delay:.0f} s "
                                                "(details in the server log)")
                        log.error("loading %s failed (retrying in %.1f s): %s", preload_id, delay, e)
                        await asyncio.sleep(delay)
                        delay = min(delay * 2, PRELOAD_RETRY[1])
                        continue
                    app.state.load_error, app.state.ready = None, True
                    metrics.loaded.labels(preload_id).set(1)
                    log.info("model %s loaded", preload_id)
                    return

            task = asyncio.create_task(_load())
        yield
        reaper.cancel()
        if task:
            task.cancel()
        await manager.close()

    app = FastAPI(title="Protégé", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.service = service
    app.state.metrics = metrics
    app.state.config = cfg
    app.state.embedder = None
    app.state.embedder_factory = embedder_factory or default_embedder
    app.state.load_error = None
    app.state.ready = False  # the preloaded model loaded once (an engine unloaded since reloads on demand)

    @app.exception_handler(EngineError)
    async def _engine_error(request: Request, e: EngineError) -> JSONResponse:
        metrics.errors.labels(e.code).inc()
        return engine_error_response(e, request.url.path)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, e: RequestValidationError) -> JSONResponse:
        errs = e.errors()
        first = errs[0] if errs else {"loc": (), "msg": "invalid request"}
        loc = [str(p) for p in first.get("loc", ()) if p != "body"]
        if first.get("type") == "invalid_unicode":  # a whole-body check (serve/wire.py): it says where
            loc = [str(first.get("ctx", {}).get("where", "body"))]
        if first.get("type") == "json_invalid":
            msg = f"We could not parse the JSON body of your request: {first.get('ctx', {}).get('error', 'invalid')}."
        else:
            text = str(first.get("msg")).removeprefix("Value error, ")
            msg = f"{'.'.join(loc) or 'body'}: {text}" + (f" ({len(errs) - 1} more)" if len(errs) > 1 else "")
        metrics.errors.labels("invalid_request_error").inc()
        return error_response(400, msg, "invalid_request_error", param=".".join(loc) or None, path=request.url.path)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, e: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status_code, "invalid_request_error")
        metrics.errors.labels(code).inc()
        msg = f"Unknown route {request.method} {request.url.path}." if e.status_code in (404, 405) else str(e.detail)
        return error_response(e.status_code, msg, code, path=request.url.path)

    @app.exception_handler(Exception)
    async def _crash(request: Request, e: Exception) -> JSONResponse:
        message = crash_message(e, f"{request.method} {request.url.path}")
        metrics.errors.labels("server_error").inc()
        return error_response(500, message, "server_error", "server_error", path=request.url.path)

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when the default model can serve now: loaded, or loaded once (an engine unloaded since reloads)."""
        if not preload_id or app.state.ready or manager.is_loaded(preload_id):
            app.state.load_error = None
            return JSONResponse({"status": "ok", "model": preload_id, "in_flight": admission.inflight})
        if app.state.load_error:
            return JSONResponse({"status": "error", "model": preload_id, "error": app.state.load_error},
                                status_code=503)
        return JSONResponse({"status": "loading", "model": preload_id}, status_code=503)

    @app.get("/metrics")
    async def prometheus() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    from serve.routers import ollama, openai

    app.include_router(openai.router)
    app.include_router(ollama.router)

    app.add_middleware(OllamaJsonBodyMiddleware)
    app.add_middleware(BodyLimitMiddleware, max_bytes=cfg.max_body_bytes)
    app.add_middleware(ApiKeyMiddleware, keys=cfg.api_keys, registry=registry)
    app.add_middleware(RequestMetricsMiddleware, metrics=metrics)
    if cfg.cors_origins:  # an allowlist: ServeConfig refuses "*"
        app.add_middleware(CORSMiddleware, allow_origins=cfg.cors_origins, allow_credentials=True,
                           allow_methods=["GET", "POST", "OPTIONS"], allow_headers=["Authorization", "Content-Type"])
    return app


class OllamaJsonBodyMiddleware:
    """Ollama reads every /api body as JSON whatever its Content-Type, and its documented calls are `curl URL -d '{..}'`
    (sent as form data): mark such bodies JSON so they parse as they do on Ollama."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["method"] == "POST" and scope["path"].startswith("/api/"):
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-type"]
            scope = {**scope, "headers": headers + [(b"content-type", b"application/json")]}
        await self.app(scope, receive, send)


class RequestMetricsMiddleware:
    """Counts requests by route and status (unknown paths share one label to bound cardinality)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        route = scope["path"] if scope["path"] in ROUTES else "other"

        async def counting_send(msg) -> None:
            if msg["type"] == "http.response.start":
                self.metrics.requests.labels(route, str(msg["status"])).inc()
            await send(msg)

        await self.app(scope, receive, counting_send)
