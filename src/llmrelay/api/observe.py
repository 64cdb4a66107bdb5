"""Per request, in one place: its id, its metrics and its access line.

:class:`ObserveMiddleware` gives each request an id (the client's ``x-request-id`` when sane)
that every response carries and every log line written while serving it shows, and when the
response is done records the request's metrics once. Handlers add what only they know (the
model, a stream's first chunk, the token usage) to the request's :class:`Exchange`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Protocol

from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmrelay.dialects.render import sortable_id
from llmrelay.logs import REQUEST_ID
from llmrelay.metrics import Metrics
from llmrelay.stream import Usage

access_log = logging.getLogger("llmrelay.access")
STATE_KEY = "llmrelay.exchange"


class _UsageSource(Protocol):
    usage: Usage | None


@dataclass(slots=True)
class Exchange:
    """What is known about one request and its response."""

    request_id: str
    started: float  # time.perf_counter() at arrival
    status: int = 0
    model: str = ""
    first_chunk: float = 0.0  # perf_counter() when a stream's first chunk was ready to send
    usage: Usage | None = None
    stream: _UsageSource | None = None  # a stream's renderer: holds the usage once sent

    def streaming(self, model: str, renderer: _UsageSource) -> None:
        """A stream has its first chunk (the gateway returns once it does)."""
        self.model = model
        self.first_chunk = time.perf_counter()
        self.stream = renderer

    def answered(self, model: str, usage: Usage | None) -> None:
        self.model = model
        self.usage = usage


def exchange(request: Request) -> Exchange:
    """The request's :class:`Exchange` (set by :class:`ObserveMiddleware`)."""
    found: Exchange = request.scope["state"][STATE_KEY]
    return found


class ObserveMiddleware:
    """Request id, ``x-request-id`` on every response, metrics and the access line."""

    def __init__(self, app: ASGIApp, *, metrics: Metrics, access_log: bool = False) -> None:
        self.app = app
        self.metrics = metrics
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        ex = Exchange(_request_id(scope), time.perf_counter())
        # Not reset afterwards: the request runs in a task of its own, and an unhandled error
        # is logged (by Starlette's outermost middleware) after this one has returned.
        REQUEST_ID.set(ex.request_id)
        state = scope.setdefault("state", {})
        state["request_id"] = ex.request_id
        state[STATE_KEY] = ex
        raw = ex.request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                ex.status = message["status"]
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw)]
            await send(message)

        self.metrics.in_flight += 1
        try:
            await self.app(scope, receive, send_with_id)
        except Exception:
            ex.status = ex.status or 500
            raise
        finally:
            self.metrics.in_flight -= 1
            self._done(scope, ex)

    def _done(self, scope: Scope, ex: Exchange) -> None:
        seconds = time.perf_counter() - ex.started
        status = ex.status or 499  # no response started: the client left first
        route = scope.get("route")
        template: str = getattr(route, "path", "") if route is not None else ""
        # An unknown model's name is the client's to choose: kept out of the labels.
        model = ex.model if status != 404 else ""
        metrics = self.metrics
        metrics.request(template, model, status, seconds)
        if ex.first_chunk:
            metrics.first_token(model, ex.first_chunk - ex.started)
        usage = ex.usage if ex.stream is None else ex.stream.usage
        if usage is not None:
            metrics.tokens(model, usage)
        if self.access_log:
            _access_line(scope, ex, status, seconds)


def _request_id(scope: Scope) -> str:
    request_id = ""
    for name, value in scope["headers"]:
        if name == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
            request_id = value.decode()
    return request_id or sortable_id("req", "_")


def _access_line(scope: Scope, ex: Exchange, status: int, seconds: float) -> None:
    latency_ms = round(seconds * 1000, 2)
    method: str = scope["method"]
    path: str = scope["path"]
    fields: dict[str, object] = {
        "method": method,
        "path": path,
        "status": status,
        "latency_ms": latency_ms,
    }
    if ex.model:
        fields["model"] = ex.model
    access_log.info("%s %s %d %.2fms", method, path, status, latency_ms, extra={"fields": fields})
