"""``/admin/channels``: the JSON admin API for channels (admin keys only).

The routes of the other ``/admin`` modules (users, keys, prices, usage) are gathered here.
"""

from __future__ import annotations

from typing import Any

from pydantic import ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api import admin_keys, admin_prices, admin_usage, admin_users
from llmrelay.api.admin_common import require_admin
from llmrelay.api.context import AppContext
from llmrelay.api.io import JSONResponse, read_json
from llmrelay.errors import Conflict, InvalidRequest, NotFound
from llmrelay.routing.probe import probe
from llmrelay.settings import ChannelConfig
from llmrelay.store.channels import ChannelError, to_json

_admin = require_admin


def public(config: ChannelConfig, source: str) -> dict[str, Any]:
    """A channel as listings show it: upstream keys are counted, never shown."""
    data = to_json(config)
    data["keys"] = len(config.keys)
    data["source"] = source
    return data


def _validated(data: Any) -> ChannelConfig:
    try:
        return ChannelConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        raise InvalidRequest(
            f"Invalid channel: {param}: {first['msg']}", param=param, code="invalid_value"
        ) from None


async def _find(ctx: AppContext, name: str) -> tuple[ChannelConfig, str]:
    for config in ctx.settings.channels:
        if config.name == name:
            return config, "config"
    try:
        return await ctx.channels.store.get(name), "db"
    except ChannelError:
        raise NotFound(f"No channel named '{name}'.", param="name") from None


async def list_channels(request: Request) -> Response:
    ctx = await _admin(request)
    stored = await ctx.channels.store.list()
    data = [public(c, "config") for c in ctx.settings.channels]
    data += [public(c, "db") for c in stored]
    return JSONResponse({"object": "list", "data": data})


async def create_channel(request: Request) -> Response:
    ctx = await _admin(request)
    config = _validated(
        await read_json(
            request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
        )
    )
    if any(c.name == config.name for c in ctx.settings.channels):
        raise Conflict(f"A channel named '{config.name}' exists in the config file.")
    try:
        await ctx.channels.store.add(config)
    except ChannelError as exc:
        raise Conflict(str(exc)) from None
    await ctx.channels.refresh()
    return JSONResponse(public(config, "db"), status_code=201)


async def get_channel(request: Request) -> Response:
    ctx = await _admin(request)
    config, source = await _find(ctx, request.path_params["name"])
    return JSONResponse(public(config, source))


async def update_channel(request: Request) -> Response:
    ctx = await _admin(request)
    config, source = await _find(ctx, request.path_params["name"])
    if source == "config":
        raise Conflict("This channel is defined in the config file; edit it there.")
    changes = await read_json(
        request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
    )
    if not isinstance(changes, dict):
        raise InvalidRequest("Send a JSON object of the fields to change.", param="body")
    if changes.get("name", config.name) != config.name:
        raise InvalidRequest("A channel cannot be renamed.", param="name")
    updated = _validated({**to_json(config), **changes})
    await ctx.channels.store.update(updated)
    await ctx.channels.refresh()
    return JSONResponse(public(updated, "db"))


async def delete_channel(request: Request) -> Response:
    ctx = await _admin(request)
    _, source = await _find(ctx, request.path_params["name"])
    if source == "config":
        raise Conflict("This channel is defined in the config file; remove it there.")
    await ctx.channels.store.remove(request.path_params["name"])
    await ctx.channels.refresh()
    return Response(status_code=204)


async def test_channel(request: Request) -> Response:
    ctx = await _admin(request)
    config, _ = await _find(ctx, request.path_params["name"])
    result = await probe(config, ctx.channels.session, ctx.channels.estimate)
    return JSONResponse(result.to_wire())


routes = [
    Route("/admin/channels", list_channels, methods=["GET"]),
    Route("/admin/channels", create_channel, methods=["POST"]),
    Route("/admin/channels/{name}", get_channel, methods=["GET"]),
    Route("/admin/channels/{name}", update_channel, methods=["PATCH"]),
    Route("/admin/channels/{name}", delete_channel, methods=["DELETE"]),
    Route("/admin/channels/{name}/test", test_channel, methods=["POST"]),
    *admin_users.routes,
    *admin_keys.routes,
    *admin_prices.routes,
    *admin_usage.routes,
]
