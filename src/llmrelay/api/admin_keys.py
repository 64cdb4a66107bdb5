"""``/admin/keys``: API keys with their limits; the secret is shown once (admin keys only)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.admin_common import (
    USD,
    Body,
    Count,
    Name,
    money,
    query_value,
    read_body,
    require_admin,
    timestamp,
)
from llmrelay.api.context import AppContext
from llmrelay.api.io import JSONResponse
from llmrelay.errors import Conflict, InvalidRequest, NotFound
from llmrelay.store.keys import KeyError_, KeyNotFound, KeyRecord

Models = Annotated[list[Annotated[str, Field(min_length=1, max_length=200)]], Field(min_length=1)]


def _utc(value: datetime | None) -> datetime | None:
    return value.replace(tzinfo=UTC) if value is not None and value.tzinfo is None else value


Expiry = Annotated[datetime, AfterValidator(_utc)]


class KeyLimits(Body):
    models: Models | None = None  # null: every model
    credit: USD | None = None  # USD the key may spend in all; null: no limit
    rpm: Count | None = None
    tpm: Count | None = None
    expires_at: Expiry | None = None  # ISO-8601 or Unix seconds; null: never

    def changes(self) -> dict[str, Any]:
        """The fields that were sent, as KeyStore column names."""
        names = {"credit": "credit_pusd"}
        return {names.get(f, f): getattr(self, f) for f in self.model_fields_set}


class KeyCreate(KeyLimits):
    name: Name
    user: Name = "default"  # the owner; created (role user) if new


def public(key: KeyRecord, secret: str | None = None) -> dict[str, Any]:
    data: dict[str, Any] = {
        "object": "api_key",
        "id": key.id,
        "name": key.name,
        "prefix": key.prefix,
        "user": key.user,
        "status": key.status(),
        "models": list(key.models) if key.models is not None else None,
        "credit": money(key.credit_pusd),
        "credit_pusd": key.credit_pusd,
        "spent": money(key.spent_pusd),
        "spent_pusd": key.spent_pusd,
        "rpm": key.rpm,
        "tpm": key.tpm,
        "created_at": timestamp(key.created_at),
        "expires_at": timestamp(key.expires_at),
        "revoked_at": timestamp(key.revoked_at),
        "last_used_at": timestamp(key.last_used_at),
    }
    if secret is not None:
        data["secret"] = secret  # only in the answers to create and reset
    return data


async def _get(ctx: AppContext, name: str) -> KeyRecord:
    await ctx.accounts.ledger.flush()  # spend and last use include every answered request
    try:
        return await ctx.keys.get(name)
    except KeyNotFound:
        raise NotFound(f"No key named '{name}'.", param="name") from None


async def list_keys(request: Request) -> Response:
    ctx = await require_admin(request)
    user = query_value(request, "user")
    await ctx.accounts.ledger.flush()
    keys = await ctx.keys.list(user=user)
    return JSONResponse({"object": "list", "data": [public(k) for k in keys]})


async def create_key(request: Request) -> Response:
    ctx = await require_admin(request)
    body = await read_body(request, ctx, KeyCreate, "key")
    limits = body.changes()
    limits.pop("name", None)
    limits.pop("user", None)
    try:
        secret = await ctx.keys.create(body.name, user=body.user, **limits)
    except KeyError_ as exc:
        raise Conflict(str(exc)) from None
    return JSONResponse(public(await _get(ctx, body.name), secret), status_code=201)


async def get_key(request: Request) -> Response:
    ctx = await require_admin(request)
    return JSONResponse(public(await _get(ctx, request.path_params["name"])))


async def update_key(request: Request) -> Response:
    """Change models, credit, rpm, tpm or expires_at; absent fields stay, null clears."""
    ctx = await require_admin(request)
    name = request.path_params["name"]
    await _get(ctx, name)
    body = await read_body(request, ctx, KeyLimits, "change")
    try:
        await ctx.keys.update(name, **body.changes())
    except KeyError_ as exc:
        raise InvalidRequest(str(exc)) from None
    return JSONResponse(public(await _get(ctx, name)))


async def reset_key(request: Request) -> Response:
    """A new secret with the same settings; the old one stops working within a second."""
    ctx = await require_admin(request)
    name = request.path_params["name"]
    try:
        secret = await ctx.keys.reset(name)
    except KeyNotFound:
        raise NotFound(f"No key named '{name}'.", param="name") from None
    return JSONResponse(public(await _get(ctx, name), secret))


async def revoke_key(request: Request) -> Response:
    ctx = await require_admin(request)
    name = request.path_params["name"]
    try:
        await ctx.keys.revoke(name)
    except KeyNotFound:
        raise NotFound(f"No key named '{name}'.", param="name") from None
    return JSONResponse(public(await _get(ctx, name)))


routes = [
    Route("/admin/keys", list_keys, methods=["GET"]),
    Route("/admin/keys", create_key, methods=["POST"]),
    Route("/admin/keys/{name}", get_key, methods=["GET"]),
    Route("/admin/keys/{name}", update_key, methods=["PATCH"]),
    Route("/admin/keys/{name}", revoke_key, methods=["DELETE"]),
    Route("/admin/keys/{name}/reset", reset_key, methods=["POST"]),
    Route("/admin/keys/{name}/revoke", revoke_key, methods=["POST"]),
]
