"""``/admin/users``: users, their roles and prepaid balances (admin keys only)."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.admin_common import USD, Body, Name, money, read_body, require_admin, timestamp
from llmrelay.api.io import JSONResponse
from llmrelay.errors import Conflict, NotFound
from llmrelay.store.credentials import Credentials, link_url
from llmrelay.store.users import UserError, UserNotFound, UserRecord, UserStore


class UserCreate(Body):
    name: Name
    role: Literal["admin", "user"] = "user"
    balance: USD | None = None  # USD; null: unlimited


class SigninLinkRequest(Body):
    # Where users reach the server (behind a proxy, not what this request came in on).
    base_url: Annotated[str, Field(max_length=2000, pattern=r"^https?://[^\s]+$")] | None = None


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
        "has_password": user.has_password,
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
    await ctx.accounts.ledger.flush()  # balances include every answered request
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
    await ctx.accounts.ledger.flush()
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


async def create_signin_link(request: Request) -> Response:
    """A one-time console sign-in link for the user (shown once; a newer one replaces it)."""
    ctx = await require_admin(request)
    name = request.path_params["name"]
    user = await _get(UserStore(ctx.db), name)
    body = SigninLinkRequest()
    if request.headers.get("content-length", "0") != "0" or "transfer-encoding" in request.headers:
        body = await read_body(request, ctx, SigninLinkRequest, "sign-in link request")
    if not user.enabled:
        raise Conflict(f"User '{name}' is disabled; enable it before making a sign-in link.")
    token, expires = await Credentials(ctx.db).new_signin_link(name)
    url = link_url(body.base_url or str(request.base_url), token)
    answer = {"object": "signin_link", "user": name, "url": url, "expires_at": timestamp(expires)}
    return JSONResponse(answer, status_code=201)


routes = [
    Route("/admin/users", list_users, methods=["GET"]),
    Route("/admin/users", create_user, methods=["POST"]),
    Route("/admin/users/{name}", get_user, methods=["GET"]),
    Route("/admin/users/{name}", update_user, methods=["PATCH"]),
    Route("/admin/users/{name}/signin-link", create_signin_link, methods=["POST"]),
]
