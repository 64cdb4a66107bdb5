"""``/admin/channels``: the JSON admin API for channels (admin keys only).

The routes of the other ``/admin`` modules (users, keys, prices, usage) are gathered here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api import admin_keys, admin_prices, admin_usage, admin_users
from llmrelay.api.admin_common import require_admin
from llmrelay.api.context import AppContext
from llmrelay.api.io import JSONResponse, read_json
from llmrelay.errors import InvalidRequest
from llmrelay.routing import manage
from llmrelay.settings import ChannelConfig
from llmrelay.store.channels import to_json

_admin = require_admin


def public(config: ChannelConfig, source: str) -> dict[str, Any]:
    """A channel as listings show it: upstream keys are counted, never shown."""
    data = to_json(config)
    data["keys"] = len(config.keys)
    data["source"] = source
    return data


async def _body(request: Request, ctx: AppContext) -> Any:
    return await read_json(
        request, limit=ctx.settings.max_body_bytes, relaxed=ctx.settings.relaxed_json
    )


# The checks and the changes themselves live in routing.manage, shared with the console.
async def list_channels(request: Request) -> Response:
    ctx = await _admin(request)
    data = [public(c, source) for c, source in await manage.listing(ctx.channels)]
    return JSONResponse({"object": "list", "data": data})


async def create_channel(request: Request) -> Response:
    ctx = await _admin(request)
    config = await manage.add(ctx.channels, await _body(request, ctx))
    return JSONResponse(public(config, "db"), status_code=201)


async def get_channel(request: Request) -> Response:
    ctx = await _admin(request)
    config, source = await manage.find(ctx.channels, request.path_params["name"])
    return JSONResponse(public(config, source))


async def update_channel(request: Request) -> Response:
    ctx = await _admin(request)
    changes = await _body(request, ctx)
    if not isinstance(changes, dict):
        raise InvalidRequest("Send a JSON object of the fields to change.", param="body")
    updated = await manage.update(ctx.channels, request.path_params["name"], changes)
    return JSONResponse(public(updated, "db"))


async def delete_channel(request: Request) -> Response:
    ctx = await _admin(request)
    await manage.remove(ctx.channels, request.path_params["name"])
    return Response(status_code=204)


async def test_channel(request: Request) -> Response:
    ctx = await _admin(request)
    result = await manage.run_test(ctx.channels, request.path_params["name"])
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
