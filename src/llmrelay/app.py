"""Build the ASGI app from one :class:`Settings` object."""

from __future__ import annotations

import asyncio
import gc
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from llmrelay.api import admin, chat, completions, health, models
from llmrelay.api.context import AppContext
from llmrelay.api.io import ClientGone, JSONResponse
from llmrelay.auth import Authenticator
from llmrelay.dialects.render import new_id
from llmrelay.engine.provider import LocalProvider
from llmrelay.errors import (
    InvalidRequest,
    LLMRelayError,
    MethodNotAllowed,
    NotFound,
    error_payload,
    internal_error,
)
from llmrelay.gateway import Gateway
from llmrelay.routing.channels import ChannelManager
from llmrelay.routing.router import Router
from llmrelay.settings import Settings
from llmrelay.store.channels import ChannelStore
from llmrelay.store.db import Database, migrate
from llmrelay.store.keys import KeyStore

log = logging.getLogger("llmrelay")


def print_admin_key(secret: str) -> None:
    print(
        f"llmrelay: created the admin API key. It is shown only this once; store it now:\n{secret}",
        flush=True,
    )


def error_response(error: LLMRelayError) -> Response:
    return JSONResponse(error_payload(error), status_code=error.status, headers=error.headers)


async def _on_relay_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, LLMRelayError)
    return error_response(exc)


async def _on_http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    if exc.status_code == 405:
        return error_response(
            MethodNotAllowed(f"Method {request.method} is not allowed on {request.url.path}.")
        )
    if exc.status_code == 404:
        return error_response(
            NotFound(
                f"Unknown route: {request.method} {request.url.path}. See /v1/models and "
                "/v1/chat/completions."
            )
        )
    return error_response(InvalidRequest(str(exc.detail)))


async def _on_client_gone(request: Request, exc: Exception) -> Response:
    return Response(status_code=499)


async def _on_unexpected(request: Request, exc: Exception) -> Response:
    log.exception("unhandled error on %s %s", request.method, request.url.path)
    return error_response(internal_error())


class RequestIdMiddleware:
    """Every response carries ``x-request-id`` (the client's, if it sent a sane one)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        request_id = ""
        for name, value in scope["headers"]:
            if name == b"x-request-id" and 0 < len(value) <= 128 and value.isascii():
                request_id = value.decode()
        request_id = request_id or new_id("req", "_")
        scope.setdefault("state", {})["request_id"] = request_id
        raw = request_id.encode()

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), (b"x-request-id", raw)]
            await send(message)

        await self.app(scope, receive, send_with_id)


def build_app(
    settings: Settings, *, on_admin_key: Callable[[str], None] = print_admin_key
) -> Starlette:
    db = Database(settings.resolved_database_url)
    keys = KeyStore(db)
    local = LocalProvider(settings.local_models)
    router = Router(
        aliases={alias: cfg.name for cfg in settings.local_models for alias in cfg.aliases},
        circuit_failures=settings.circuit_failures,
        circuit_cooldown=settings.circuit_cooldown_seconds,
    )
    channels = ChannelManager(settings, router, local, ChannelStore(db))
    ctx = AppContext(
        settings=settings,
        db=db,
        keys=keys,
        auth=Authenticator(keys, cache_seconds=settings.key_cache_seconds),
        router=router,
        gateway=Gateway(router),
        local=local,
        channels=channels,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, settings.resolved_database_url)
        admin_secret = settings.admin_key.get_secret_value() if settings.admin_key else None
        created = await keys.ensure_admin(admin_secret)
        if created is not None and admin_secret is None:
            on_admin_key(created)
        await local.start()
        await channels.refresh()
        channels.start()
        ctx.ready = True
        # What exists now (the model, templates, compiled schemas) lives as long as the server:
        # kept out of every later garbage collection, which then only scans request garbage.
        gc.collect()
        gc.freeze()
        log.info("llmrelay ready on %s:%s", settings.host, settings.port)
        try:
            yield
        finally:
            ctx.ready = False
            await channels.close()
            await local.close()
            await db.close()

    app = Starlette(
        routes=[*chat.routes, *completions.routes, *models.routes, *health.routes, *admin.routes],
        exception_handlers={
            LLMRelayError: _on_relay_error,
            HTTPException: _on_http_error,
            ClientGone: _on_client_gone,
            Exception: _on_unexpected,
        },
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    app.add_middleware(RequestIdMiddleware)
    return app
