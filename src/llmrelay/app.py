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
from starlette.types import ASGIApp

from llmrelay.accounting.ledger import LedgerWriter
from llmrelay.accounting.limits import create_limiter
from llmrelay.accounting.meter import Accounts, PriceBook
from llmrelay.accounting.upkeep import ledger_upkeep
from llmrelay.api import admin, chat, completions, health, models
from llmrelay.api import metrics as metrics_api
from llmrelay.api.context import AppContext
from llmrelay.api.hot import ErrorHandler, HotRoutes
from llmrelay.api.io import ClientGone, JSONResponse
from llmrelay.api.observe import ObserveMiddleware
from llmrelay.auth import Authenticator
from llmrelay.console import routes as console_routes
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
from llmrelay.metrics import Metrics
from llmrelay.routing.channels import ChannelManager
from llmrelay.routing.router import Router
from llmrelay.settings import Settings
from llmrelay.store.channels import ChannelStore
from llmrelay.store.db import Database, migrate
from llmrelay.store.keys import KeyStore
from llmrelay.store.prices import PriceStore
from llmrelay.store.usage import UsageStore

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


def build_app(
    settings: Settings, *, on_admin_key: Callable[[str], None] = print_admin_key
) -> ASGIApp:
    db = Database(settings.resolved_database_url)
    keys = KeyStore(db)
    local = LocalProvider(settings.local_models)
    router = Router(
        aliases={alias: cfg.name for cfg in settings.local_models for alias in cfg.aliases},
        circuit_failures=settings.circuit_failures,
        circuit_cooldown=settings.circuit_cooldown_seconds,
    )
    channels = ChannelManager(settings, router, local, ChannelStore(db))
    ledger = LedgerWriter(db, settings.resolved_journal_dir)
    metrics = Metrics()
    limiter = create_limiter(settings.redis_url, prefix=settings.redis_prefix)
    metrics.register(router.breakers, local.stats, ledger.counts, limiter.counts)
    accounts = Accounts(
        limiter=limiter,
        ledger=ledger,
        prices=PriceBook(PriceStore(db)),
        estimate=channels.estimate,
        default_reserve_tokens=settings.reserve_max_tokens,
        enabled=settings.accounting,
    )
    ctx = AppContext(
        settings=settings,
        db=db,
        keys=keys,
        auth=Authenticator(keys, cache_seconds=settings.key_cache_seconds),
        router=router,
        gateway=Gateway(router, on_attempt=metrics.attempt),
        local=local,
        channels=channels,
        metrics=metrics,
        accounts=accounts,
    )

    @asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await asyncio.to_thread(migrate, settings.resolved_database_url)
        admin_secret = settings.admin_key.get_secret_value() if settings.admin_key else None
        created = await keys.ensure_admin(admin_secret)
        if created is not None and admin_secret is None:
            on_admin_key(created)
        await local.start()
        await accounts.ledger.start()
        upkeep = asyncio.get_running_loop().create_task(
            ledger_upkeep(UsageStore(db), settings.ledger_retention_days)
        )
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
            upkeep.cancel()
            await channels.close()
            await local.close()
            await accounts.ledger.stop()
            await accounts.limiter.close()
            await db.close()

    handlers: dict[type[Exception], ErrorHandler] = {
        LLMRelayError: _on_relay_error,
        HTTPException: _on_http_error,
        ClientGone: _on_client_gone,
        Exception: _on_unexpected,
    }
    app = Starlette(
        routes=[
            *chat.routes,
            *completions.routes,
            *models.routes,
            *health.routes,
            *admin.routes,
            *metrics_api.routes,
            *console_routes,
        ],
        exception_handlers=dict(handlers),
        lifespan=lifespan,
    )
    app.state.ctx = ctx
    hot = HotRoutes(app, [*chat.routes, *completions.routes], handlers)
    return ObserveMiddleware(hot, metrics=metrics, access_log=settings.access_log)
