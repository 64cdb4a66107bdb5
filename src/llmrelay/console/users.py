"""Console: the admin Users page (list, create, set balance, disable and enable, one-time
sign-in links); admins only, others get a 403 page.

Every change goes through the same stores as ``llmrelay users`` and ``/admin/users``.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from llmrelay.accounting.money import Money, MoneyError, parse_usd, usd_text
from llmrelay.api.context import context
from llmrelay.console.admin import admin_only
from llmrelay.console.pages import error_page, page
from llmrelay.console.views import Viewer
from llmrelay.store.credentials import LINK_LIFETIME, Credentials, check_password_rules, link_url
from llmrelay.store.users import ROLES, UserError, UserNotFound, UserRecord, UserStore

HOME = "/console/admin/users"
UNLIMITED = ("", "unlimited", "none")
NOTICES = {
    "created": "User “{}” is created.",
    "balance": "The balance of “{}” is set.",
    "disabled": "User “{}” is disabled: their keys stop working and their console sessions end.",
    "enabled": "User “{}” is enabled again. Their keys work again; they sign in anew.",
}


@dataclass(frozen=True, slots=True)
class UserRow:
    user: UserRecord
    href: str  # the user's page; names may hold any character, so quoted whole


def user_href(name: str) -> str:
    return f"{HOME}/{quote(name, safe='')}"


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _notice(request: Request) -> str | None:
    for code, text in NOTICES.items():
        if code in request.query_params:
            return text.format(request.query_params[code])
    return None


def parse_balance(text: str) -> Money | None:
    """A balance from a form: blank or "unlimited" is no limit, else USD."""
    if text.strip().lower() in UNLIMITED:
        return None
    try:
        return parse_usd(text.strip())
    except MoneyError as exc:
        raise UserError(f"Balance: {exc}") from None


async def _list_page(
    request: Request,
    viewer: Viewer,
    status: int = 200,
    form: dict[str, str] | None = None,
    error: str | None = None,
) -> Response:
    ctx = context(request)
    await ctx.accounts.ledger.flush()  # balances include every answered request
    users = await UserStore(ctx.db).list()
    rows = [UserRow(user, user_href(user.name)) for user in users]
    return page(
        "users.html",
        status,
        viewer=viewer,
        nav="users",
        rows=rows,
        roles=ROLES,
        form=form or {"role": "user"},
        error=error,
        notice=_notice(request),
    )


async def list_users(request: Request, viewer: Viewer) -> Response:
    return await _list_page(request, viewer)


async def create_user(request: Request, viewer: Viewer) -> Response:
    form: dict[str, str] = request.state.form
    name, password = form.get("name", "").strip(), form.get("password", "")
    shown = {k: v for k, v in form.items() if k not in ("password", "csrf")}  # never echoed
    db = context(request).db
    try:
        balance = parse_balance(form.get("balance", ""))
        if password:
            check_password_rules(password)
        await UserStore(db).create(name, role=form.get("role", "user"), balance=balance)
    except UserError as exc:
        return await _list_page(request, viewer, 400, form=shown, error=_sentence(str(exc)))
    if password:
        await Credentials(db).set_password(name, password)
    return RedirectResponse(f"{user_href(name)}?created={quote(name)}", status_code=303)


async def _user(request: Request, viewer: Viewer) -> UserRecord | Response:
    """The user named in the path, or the 404 page that says there is none."""
    name = request.path_params["name"]
    ctx = context(request)
    await ctx.accounts.ledger.flush()  # the balance includes every answered request
    try:
        return await UserStore(ctx.db).get(name)
    except UserNotFound:
        return error_page(f"There is no user named “{name}”.", 404, viewer=viewer, nav="users")


def _user_page(
    request: Request, viewer: Viewer, user: UserRecord, status: int = 200, **extra: object
) -> Response:
    values: dict[str, object] = {"notice": _notice(request), "error": None, "link": None}
    return page(
        "user.html",
        status,
        viewer=viewer,
        nav="users",
        user=user,
        href=user_href(user.name),
        balance_text="" if user.balance_pusd is None else usd_text(user.balance_pusd),
        link_hours=int(LINK_LIFETIME.total_seconds() // 3600),
        **(values | extra),
    )


async def user_page(request: Request, viewer: Viewer) -> Response:
    user = await _user(request, viewer)
    if isinstance(user, Response):
        return user
    return _user_page(request, viewer, user)


def _done(code: str, name: str) -> Response:
    return RedirectResponse(f"{user_href(name)}?{code}={quote(name)}", status_code=303)


async def set_balance(request: Request, viewer: Viewer) -> Response:
    user = await _user(request, viewer)
    if isinstance(user, Response):
        return user
    try:
        balance = parse_balance(request.state.form.get("balance", ""))
    except UserError as exc:
        return _user_page(request, viewer, user, 400, error=_sentence(str(exc)))
    await UserStore(context(request).db).set_balance(user.name, balance)
    return _done("balance", user.name)


async def switch_user(request: Request, viewer: Viewer) -> Response:
    """Disable or enable (the last part of the path says which)."""
    user = await _user(request, viewer)
    if isinstance(user, Response):
        return user
    store = UserStore(context(request).db)
    if request.url.path.endswith("/enable"):
        await store.enable(user.name)
        return _done("enabled", user.name)
    if user.id == viewer.user_id:
        error = "You cannot disable yourself: you would be locked out. Another admin can."
        return _user_page(request, viewer, user, 409, error=error)
    await store.disable(user.name)
    return _done("disabled", user.name)


async def signin_link(request: Request, viewer: Viewer) -> Response:
    """A new one-time sign-in link for the user, shown on this page only (never stored)."""
    user = await _user(request, viewer)
    if isinstance(user, Response):
        return user
    if not user.enabled:
        error = f"User “{user.name}” is disabled; enable them before making a sign-in link."
        return _user_page(request, viewer, user, 409, error=error)
    token, expires = await Credentials(context(request).db).new_signin_link(user.name)
    link = link_url(str(request.base_url), token)
    return _user_page(request, viewer, user, link=link, link_expires=expires, notice=None)


NAMED = HOME + "/{name:path}"

routes = [
    Route(HOME, admin_only(list_users), methods=["GET"]),
    Route(HOME, admin_only(create_user), methods=["POST"]),
    Route(NAMED + "/balance", admin_only(set_balance), methods=["POST"]),
    Route(NAMED + "/disable", admin_only(switch_user), methods=["POST"]),
    Route(NAMED + "/enable", admin_only(switch_user), methods=["POST"]),
    Route(NAMED + "/signin-link", admin_only(signin_link), methods=["POST"]),
    Route(NAMED, admin_only(user_page), methods=["GET"]),
]
