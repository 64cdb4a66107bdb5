"""Console: signing in (password, API key or one-time link), signing out, and the account page
where a user sets or changes their password.

The sign-in forms come before any session, so their CSRF token is a signed double-submit one
(see ``session.py``): the nonce in the ``LOGIN_COOKIE`` cookie, its HMAC in the form.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from llmrelay.api.context import context
from llmrelay.console.pages import error_page, page, read_form
from llmrelay.console.session import (
    COOKIE,
    LIFETIME_SECONDS,
    LOGIN_COOKIE,
    Method,
    Session,
    SessionSigner,
)
from llmrelay.console.views import (
    Viewer,
    credentials,
    current_viewer,
    signed_in,
    signer,
    start_session,
    to_login,
)
from llmrelay.store.credentials import PasswordError

HOME = "/console/keys"
ACCOUNT = "/console/account"
STALE_FORM = (
    "This sign-in form is stale or did not come from this site. Nothing was done; "
    "try again on this page."
)
# One answer for every failed password sign-in, so it never tells which user names exist.
WRONG_PASSWORD = (
    "That user name and password do not match an account that may sign in. Check both, or "
    "ask your admin for a one-time sign-in link."
)
WRONG_KEY = "That API key is unknown, revoked or expired."
DEAD_LINK = (
    "This sign-in link was already used, has expired or is not valid. A link works once, "
    "within 24 hours; ask your admin for a new one."
)


def _pre_session_page(
    request: Request, template: str, status: int = 200, **values: Any
) -> Response:
    """A page with a sign-in form: its CSRF token, and the cookie the token pairs with."""
    nonce = SessionSigner.login_nonce(request.cookies.get(LOGIN_COOKIE))
    fresh = nonce is None
    nonce = nonce or SessionSigner.new_login_nonce()
    response = page(template, status, viewer=None, csrf=signer(request).login_csrf(nonce), **values)
    if fresh:
        response.set_cookie(
            LOGIN_COOKIE,
            nonce,
            max_age=LIFETIME_SECONDS,
            path="/console",
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
    return response


def _pre_session_csrf_ok(request: Request, form: dict[str, str]) -> bool:
    nonce = SessionSigner.login_nonce(request.cookies.get(LOGIN_COOKIE))
    return signer(request).check_login_csrf(nonce, form.get("csrf"))


def _login_page(request: Request, error: str | None, status: int = 200, name: str = "") -> Response:
    return _pre_session_page(request, "login.html", status, error=error, name=name)


def _signed_in(request: Request, session: Session, to: str) -> Response:
    response = RedirectResponse(to, status_code=303)
    start_session(request, response, session)
    return response


async def login_form(request: Request) -> Response:
    if await current_viewer(request) is not None:
        return RedirectResponse(HOME, status_code=303)
    return _login_page(request, None)


async def login(request: Request) -> Response:
    """Sign in with an API key if one is given, else with user name and password."""
    try:
        form = await read_form(request)
    except ValueError as exc:
        return _login_page(request, str(exc), 413)
    name = form.get("name", "").strip()
    if not _pre_session_csrf_ok(request, form):
        return _login_page(request, STALE_FORM, 403, name=name)
    secret = form.get("key", "").strip()
    if secret:
        return await _key_sign_in(request, secret)
    password = form.get("password", "")
    if not name or not password:
        return _login_page(request, "Enter your user name and password, or an API key.", 400, name)
    user = await credentials(request).check_password(name, password)
    if user is None:
        return _login_page(request, WRONG_PASSWORD, 401, name=name)
    return _signed_in(request, signer(request).new(user.id, user.session_version, "password"), HOME)


async def _key_sign_in(request: Request, secret: str) -> Response:
    """The admin key works for the first sign-in; a user's key signs in as that user."""
    key = await context(request).keys.lookup(secret)
    user = await credentials(request).session_user(key.user_id) if key is not None else None
    if key is None or not key.usable() or user is None or not user.enabled:
        return _login_page(request, WRONG_KEY, 401)
    session = signer(request).new(user.id, user.session_version, "key", key.name, key.prefix)
    return _signed_in(request, session, HOME)


def _dead_link() -> Response:
    return error_page(DEAD_LINK, 404, viewer=None, title="Sign-in link not valid")


async def link_form(request: Request) -> Response:
    """What a one-time link opens: a button that signs in. Opening the link does not use it
    up (link previews and scanners fetch links too); pressing the button does."""
    token = request.query_params.get("token", "")
    user = await credentials(request).peek_link(token) if token else None
    if user is None:
        return _dead_link()
    return _pre_session_page(request, "signin_link.html", user_name=user.name, token=token)


async def link_sign_in(request: Request) -> Response:
    try:
        form = await read_form(request)
    except ValueError as exc:
        return error_page(str(exc), 413, viewer=None)
    if not _pre_session_csrf_ok(request, form):
        stale = STALE_FORM.replace("on this page", "by opening the link again")
        return error_page(stale, 403, viewer=None)
    user = await credentials(request).redeem_link(form.get("token", ""))
    if user is None:
        return _dead_link()
    session = signer(request).new(user.id, user.session_version, "link")
    return _signed_in(request, session, ACCOUNT + "?welcome=1")


async def logout(request: Request, viewer: Viewer) -> Response:
    response = to_login()
    response.delete_cookie(COOKIE, path="/console")
    return response


def _needs_current(viewer: Viewer) -> bool:
    """A password change asks for the current one, except right after a sign-in link (the
    admin's way to let someone who forgot it back in) or when there is none yet."""
    return viewer.user.has_password and viewer.session.method != "link"


def _account_page(request: Request, viewer: Viewer, status: int = 200, **extra: Any) -> Response:
    values: dict[str, Any] = {"notice": None, "error": None, **extra}
    return page(
        "account.html",
        status,
        viewer=viewer,
        nav="account",
        needs_current=_needs_current(viewer),
        **values,
    )


async def account(request: Request, viewer: Viewer) -> Response:
    welcome = request.query_params.get("welcome") == "1"
    notice = "You are signed in. Set a password to sign in with it next time." if welcome else None
    return _account_page(request, viewer, notice=notice)


async def change_password(request: Request, viewer: Viewer) -> Response:
    form: dict[str, str] = request.state.form
    new, again = form.get("new_password", ""), form.get("new_password_again", "")
    if new != again:
        return _account_page(request, viewer, 400, error="The two new passwords differ.")
    creds = credentials(request)
    current = form.get("current_password", "")
    if _needs_current(viewer) and await creds.check_password(viewer.user_name, current) is None:
        return _account_page(request, viewer, 400, error="Your current password is wrong.")
    try:
        version = await creds.set_password(viewer.user_name, new)
    except PasswordError as exc:
        text = str(exc)
        return _account_page(request, viewer, 400, error=text[:1].upper() + text[1:] + ".")
    # This session carries on under the new version; every other one has just ended.
    method: Method = "password" if viewer.session.method == "link" else viewer.session.method
    session = signer(request).renewed(viewer.session, version, method)
    user = replace(viewer.user, has_password=True, session_version=version)
    fresh = replace(viewer, user=user, session=session)
    notice = "Your password is set. Your other sessions are signed out; this one goes on."
    response = _account_page(request, fresh, notice=notice)
    start_session(request, response, session)
    return response


routes = [
    Route("/console/login", login_form, methods=["GET"]),
    Route("/console/login", login, methods=["POST"]),
    Route("/console/signin", link_form, methods=["GET"]),
    Route("/console/signin", link_sign_in, methods=["POST"]),
    Route("/console/logout", signed_in(logout), methods=["POST"]),
    Route(ACCOUNT, signed_in(account), methods=["GET"]),
    Route(ACCOUNT + "/password", signed_in(change_password), methods=["POST"]),
]
