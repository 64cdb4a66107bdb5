"""``/admin/users``: users, their roles and prepaid balances (admin keys only)."""

from __future__ import annotations

from typing import Any, Literal

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.admin_common import USD, Body, Name, money, read_body, require_admin, timestamp
from llmrelay.api.io import JSONResponse
from llmrelay.errors import Conflict, NotFound
from llmrelay.store.users import UserError, UserNotFound, UserRecord, UserStore


class UserCreate(Body):
    name: Name
    role: Literal["admin", "user"] = "user"
    balance: USD | None = None  # USD; null: unlimited


class UserChange(Body):
    role: Literal["admin", "user"] | None = None
    balance: USD | None = None
    disabled: bool | None = None


def public(user: UserRecord) -> dict[str, Any]:
    return {
        "object": "user",
        "id": user.id,
        "name": user.name,
        "role": user.role,
        "balance": money(user.balance_pusd),
        "balance_pusd": user.balance_pusd,
        "spent": money(user.spent_pusd),
        "spent_pusd": user.spent_pusd,
        "disabled": not user.enabled,
        "keys": user.keys,
        "created_at": timestamp(user.created_at),
        "disabled_at": timestamp(user.disabled_at),
    }


async def _get(store: UserStore, name: str) -> UserRecord:
    try:
        return await store.get(name)
    except UserNotFound:
        raise NotFound(f"No user named '{name}'.", param="name") from None


async def list_users(request: Request) -> Response:
    ctx = await require_admin(request)
    users = await UserStore(ctx.db).list()
    return JSONResponse({"object": "list", "data": [public(u) for u in users]})


async def create_user(request: Request) -> Response:
    ctx = await require_admin(request)
    body = await read_body(request, ctx, UserCreate, "user")
    store = UserStore(ctx.db)
    try:
        await store.create(body.name, role=body.role, balance=body.balance)
    except UserError as exc:
        raise Conflict(str(exc)) from None
    return JSONResponse(public(await store.get(body.name)), status_code=201)


async def get_user(request: Request) -> Response:
    ctx = await require_admin(request)
    return JSONResponse(public(await _get(UserStore(ctx.db), request.path_params["name"])))


async def update_user(request: Request) -> Response:
    """Change ``role``, ``balance`` (null: unlimited) or ``disabled``; absent fields stay."""
    ctx = await require_admin(request)
    name = request.path_params["name"]
    store = UserStore(ctx.db)
    await _get(store, name)
    body = await read_body(request, ctx, UserChange, "change")
    if "balance" in body.model_fields_set:
        await store.set_balance(name, body.balance)
    if body.role is not None:
        await store.set_role(name, body.role)
    if body.disabled is not None:
        await (store.disable if body.disabled else store.enable)(name)
    return JSONResponse(public(await _get(store, name)))


routes = [
    Route("/admin/users", list_users, methods=["GET"]),
    Route("/admin/users", create_user, methods=["POST"]),
    Route("/admin/users/{name}", get_user, methods=["GET"]),
    Route("/admin/users/{name}", update_user, methods=["PATCH"]),
]
