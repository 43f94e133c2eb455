"""Operations: OpenAI-shaped errors, API keys, request body limit, bounded admission (429 + Retry-After).

The auth and body-limit layers are plain ASGI middleware so they cover every route — Ollama's too, unlike servers that
protect only /v1 — and run before any body is parsed.
"""

from __future__ import annotations

import json
import secrets
from typing import Any

from starlette.responses import JSONResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from serve.engines.base import EngineError, QueueFull

OPEN_PATHS = {"/health"}


def error_body(message: str, code: str, type_: str = "invalid_request_error", param: str | None = None) -> dict:
    return {"error": {"message": message, "type": type_, "param": param, "code": code}}


def error_response(status: int, message: str, code: str, type_: str = "invalid_request_error",
                   param: str | None = None, headers: dict[str, str] | None = None) -> JSONResponse:
    return JSONResponse(error_body(message, code, type_, param), status_code=status, headers=headers)


def engine_error_response(e: EngineError) -> JSONResponse:
    headers = {"Retry-After": "1"} if isinstance(e, QueueFull) else None
    return error_response(e.status, str(e), e.code, e.type, e.param, headers)


async def _send_json(send: Send, status: int, body: dict, headers: list[tuple[bytes, bytes]] | None = None) -> None:
    raw = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(raw)).encode())]
                + (headers or [])})
    await send({"type": "http.response.body", "body": raw})


class ApiKeyMiddleware:
    """Bearer keys compared in constant time; /health stays open for load balancers; CORS preflights pass."""

    def __init__(self, app: ASGIApp, keys: list[str]):
        self.app = app
        self.keys = [k.encode() for k in keys if k]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not self.keys or scope["path"] in OPEN_PATHS or scope["method"] == "OPTIONS":
            return await self.app(scope, receive, send)
        auth = dict(scope["headers"]).get(b"authorization", b"")
        token = auth[7:].strip() if auth[:7].lower() == b"bearer " else b""
        ok = False
        for k in self.keys:  # compare with every key: timing does not reveal which one matched
            ok |= secrets.compare_digest(token, k)
        if not ok:
            return await _send_json(send, 401, error_body(
                "Incorrect or missing API key: send 'Authorization: Bearer <key>'.", "invalid_api_key",
                "authentication_error"), [(b"www-authenticate", b"Bearer")])
        await self.app(scope, receive, send)


class BodyLimitMiddleware:
    """413 when Content-Length is over the limit, or when a chunked body grows past it."""

    def __init__(self, app: ASGIApp, max_bytes: int):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await _send_json(send, 413, self._body())
        seen = 0
        started = False

        async def limited_receive() -> Message:
            nonlocal seen
            msg = await receive()
            if msg["type"] == "http.request":
                seen += len(msg.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge()
            return msg

        async def tracking_send(msg: Message) -> None:
            nonlocal started
            if msg["type"] == "http.response.start":
                started = True
            await send(msg)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except _TooLarge:
            if not started:
                await _send_json(send, 413, self._body())

    def _body(self) -> dict[str, Any]:
        return error_body(f"Request body is larger than the limit of {self.max_bytes} bytes.", "request_too_large")


class _TooLarge(Exception):
    pass


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
