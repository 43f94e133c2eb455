"""Operations: errors in each API's shape, API keys, request body limit, bounded admission (429 + Retry-After).

The auth and body-limit layers are plain ASGI middleware so they cover every route — Ollama's too, unlike servers that
protect only /v1 — and run before any body is parsed.

API keys (see README, "Serving securely"): the server's own keys (`--api-key`, $PROTEGE_API_KEYS) open every model;
an assistant's `serve.api_keys` open that assistant's models. When any key exists anywhere, every route but /health
needs a valid key; a request that names a model of an assistant with keys of its own needs one of those keys or a
server key (a key of assistant A never opens B's models: 403). Keys are kept and compared as SHA-256 digests in
constant time, and a config may hold `sha256:<hex>` digests instead of keys (the edge bundle ships only those).

Errors take the shape of the API their path belongs to (`error_body(..., path)`): Ollama's `{"error": "<message>"}`
on /api/* (Ollama's clients read that string), OpenAI's `{"error": {"message", "type", "param", "code"}}` elsewhere.
"""

from __future__ import annotations

import hashlib
import json
import logging
import secrets
import uuid
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from protege.keys import key_digest
from serve.engines.base import EngineError, QueueFull
from serve.wire import printable

OPEN_PATHS = {"/health"}
OLLAMA_PREFIX = "/api/"  # Ollama's API; every other route speaks OpenAI's (errors included)

log = logging.getLogger("protege.serve")


def ollama_error_body(message: str, code: str, param: str | None = None) -> dict:
    """Ollama's error shape, `{"error": "<message>"}`, plus OpenAI's `code` and `param` beside it (keys Ollama clients
    ignore) so a program can tell errors apart without parsing the message."""
    return {"error": printable(message), "code": code, "param": printable(param) if param else param}


def error_body(message: str, code: str, type_: str = "invalid_request_error", param: str | None = None,
               path: str = "") -> dict:
    """The error shape of the API `path` belongs to (Ollama's on /api/*, else OpenAI's); text is made safe to encode
    as UTF-8."""
    if path.startswith(OLLAMA_PREFIX):
        return ollama_error_body(message, code, param)
    return {"error": {"message": printable(message), "type": type_, "param": printable(param) if param else param,
                      "code": code}}


def error_response(status: int, message: str, code: str, type_: str = "invalid_request_error",
                   param: str | None = None, headers: dict[str, str] | None = None, path: str = "") -> JSONResponse:
    return JSONResponse(error_body(message, code, type_, param, path), status_code=status, headers=headers)


def engine_error_response(e: EngineError, path: str = "") -> JSONResponse:
    headers = {"Retry-After": "1"} if isinstance(e, QueueFull) else None
    return error_response(e.status, str(e), e.code, e.type, e.param, headers, path)


def crash_message(e: BaseException, where: str) -> str:
    """Log an unexpected error under a fresh id; the client's message names only that id (exception text may hold
    paths)."""
    error_id = uuid.uuid4().hex[:12]
    log.error("unhandled error %s on %s", error_id, where, exc_info=e)
    return f"Internal server error (id {error_id}); the server log has the details."


async def _send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": raw})


@dataclass(frozen=True)
class Grant:
    """What a request's key opens: every model (a server key) or the models of these assistants."""

    everything: bool
    assistants: frozenset[str]


# The grant of the request being served (set by ApiKeyMiddleware); None: no keys anywhere, everything is open.
current_grant: ContextVar[Grant | None] = ContextVar("protege_grant", default=None)


class PermissionDenied(EngineError):
    status = 403
    code = "permission_denied"
    type = "permission_error"


def authorize(spec: Any) -> None:
    """Raise 403 when the request's key does not open `spec`'s assistant (called wherever a model id is resolved)."""
    grant = current_grant.get()
    if grant is None or grant.everything or spec.assistant in grant.assistants or not spec.cfg.serve.api_keys:
        return
    raise PermissionDenied(f"This API key does not give access to the model '{spec.id}'.", "model")


class KeyRing:
    """The server's keys plus every served assistant's `serve.api_keys` (re-read when the registry refreshes)."""

    def __init__(self, keys: list[str], registry: Any = None):
        self.server = [key_digest(k) for k in keys if k]
        self.registry = registry
        self._seen: Any = None
        self._per: dict[str, list[bytes]] = {}

    def per_assistant(self) -> dict[str, list[bytes]]:
        specs = getattr(self.registry, "specs", None) or {}
        if specs is not self._seen:
            per: dict[str, list[bytes]] = {}
            for spec in specs.values():
                if spec.cfg.serve.api_keys and spec.assistant not in per:
                    per[spec.assistant] = [key_digest(k) for k in spec.cfg.serve.api_keys if k]
            self._seen, self._per = specs, per
        return self._per

    @property
    def active(self) -> bool:
        return bool(self.server or self.per_assistant())

    def grant(self, token: bytes) -> Grant | None:
        """The grant of a bearer token, None when it matches no key; every digest is compared (constant time)."""
        d = hashlib.sha256(token).digest()
        everything = False
        for k in self.server:
            everything |= secrets.compare_digest(d, k)
        names = set()
        for name, digests in self.per_assistant().items():
            hit = False
            for k in digests:
                hit |= secrets.compare_digest(d, k)
            if hit:
                names.add(name)
        return Grant(everything, frozenset(names)) if everything or names else None


class ApiKeyMiddleware:
    """Bearer keys (see the module docstring); /health stays open for load balancers; CORS preflights pass."""

    def __init__(self, app: ASGIApp, keys: list[str], registry: Any = None):
        self.app = app
        self.ring = KeyRing(keys, registry)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (scope["type"] != "http" or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS"
                or not self.ring.active):
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        grant = self.ring.grant(token) if token else None
        if grant is None:
            return await _send_json(send, 401, error_body(
                "Incorrect or missing API key: send 'Authorization: Bearer <key>'.", "invalid_api_key",
                "authentication_error", path=scope["path"]), [(b"www-authenticate", b"Bearer")])
        reset = current_grant.set(grant)
        try:
            await self.app(scope, receive, send)
        finally:
            current_grant.reset(reset)


class BodyLimitMiddleware:
    """413 when Content-Length is over the limit, or when a chunked body grows past it.

    The body is read here, whole, before the app sees it (the app parses JSON bodies whole anyway): an over-limit
    chunked body is a 413 before FastAPI's body parsing could turn the error into a 400. Once replayed, `receive`
    is the server's own again, so a client disconnect still reaches a stream."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, self._body(scope["path"]))
        chunks: list[bytes] = []
        seen = 0
        while True:
            msg = await receive()
            if msg["type"] != "http.request":  # the client left before sending its body
                return
            body = msg.get("body", b"")
            seen += len(body)
            if seen > self.max_bytes:
                return await _send_json(send, 413, self._body(scope["path"]))
            chunks.append(body)
            if not msg.get("more_body", False):
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    def _body(self, path: str) -> dict[str, Any]:
        return error_body(f"Request body is larger than the limit of {self.max_bytes} bytes.", "request_too_large",
                          path=path)


class Admission:
    """At most `active + max_queue` generations admitted; beyond that a 429 with Retry-After, never a pile-up."""

    def __init__(self, active: int, max_queue: int, metrics=None):
        self.active, self.max_queue, self.metrics = active, max_queue, metrics
        self.inflight = 0

    def enter(self) -> None:
        if self.inflight >= self.active + self.max_queue:
            if self.metrics:
                self.metrics.rejected.inc()
            raise QueueFull(f"Server busy: {self.inflight} requests in flight (queue of {self.max_queue} is full); "
                            "retry later.")
        self.inflight += 1
        self._publish()

    def leave(self) -> None:
        self.inflight -= 1
        self._publish()

    def _publish(self) -> None:
        if self.metrics:
            self.metrics.inflight.set(self.inflight)
            self.metrics.queue_depth.set(max(0, self.inflight - self.active))
