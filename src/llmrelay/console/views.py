"""Console routes: who is signed in (``Viewer``, ``signed_in``), the API key page (list,
create, reset, revoke) and the HTML 404 for unknown console paths. Signing in and out and
the account page are in ``console/signin.py``."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response
from starlette.routing import Route

from llmrelay.accounting.money import MoneyError, parse_usd
from llmrelay.api.context import AppContext, context
from llmrelay.console.pages import error_page, page, read_form, static
from llmrelay.console.session import COOKIE, LIFETIME_SECONDS, Session, SessionSigner, load_secret
from llmrelay.store.credentials import Credentials, SessionUser
from llmrelay.store.keys import KeyError_, KeyNotFound, KeyRecord

Handler = Callable[[Request], Awaitable[Response]]
log = logging.getLogger("llmrelay.console")


@dataclass(frozen=True, slots=True)
class Viewer:
    """Who is signed in: their user, the key they signed in with (if they used one), their
    session and its CSRF token."""

    user: SessionUser
    session: Session
    csrf: str
    key: KeyRecord | None = None

    # Pages use only admin, user_id, user_name, csrf and may_see; how a viewer signed in may
    # change. signed_in_with is for the key pages (resetting your own key signs you out).
    @property
    def admin(self) -> bool:
        return self.user.role == "admin"

    @property
    def user_id(self) -> int:
        return self.user.id

    @property
    def user_name(self) -> str:
        return self.user.name

    def may_see(self, key: KeyRecord) -> bool:
        return self.admin or key.user_id == self.user.id

    def signed_in_with(self, key: KeyRecord) -> bool:
        return self.key is not None and self.key.id == key.id


def signer(request: Request) -> SessionSigner:
    state = request.app.state
    if not hasattr(state, "console_signer"):
        state.console_signer = SessionSigner(load_secret(context(request).settings.data_dir))
    found: SessionSigner = state.console_signer
    return found


def credentials(request: Request) -> Credentials:
    return Credentials(context(request).db)


async def current_viewer(request: Request) -> Viewer | None:
    """The signed-in viewer, or None when the session is missing, expired or has ended: the
    user is disabled or changed their password since (a new session version), or the key
    the session was made with was reset, revoked or expired."""
    found = signer(request)
    session = found.load(request.cookies.get(COOKIE))
    if session is None:
        return None
    user = await credentials(request).session_user(session.user_id)
    if user is None or not user.enabled or user.session_version != session.version:
        return None
    key = None
    if session.method == "key":
        try:
            key = await context(request).keys.get(session.key_name)
        except KeyNotFound:
            return None
        if key.prefix != session.key_prefix or not key.usable() or key.user_id != user.id:
            return None
    return Viewer(user, session, found.csrf(session), key)


def start_session(request: Request, response: Response, session: Session) -> None:
    """Set the session cookie: HttpOnly, SameSite=Lax, Secure over https, for /console only."""
    response.set_cookie(
        COOKIE,
        signer(request).dump(session),
        max_age=LIFETIME_SECONDS,
        path="/console",
        secure=request.url.scheme == "https",
        httponly=True,
        samesite="lax",
    )


def to_login() -> Response:
    return RedirectResponse("/console/login", status_code=303)


def signed_in(handler: Callable[[Request, Viewer], Awaitable[Response]]) -> Handler:
    """A page for signed-in users; POSTs must also carry the session's CSRF token."""

    async def wrapped(request: Request) -> Response:
        viewer = await current_viewer(request)
        if viewer is None:
            if request.method == "GET":
                return to_login()
            return error_page("Your session has ended. Sign in again.", 401, viewer=None)
        if request.method == "POST":
            try:
                form = await read_form(request)
            except ValueError as exc:
                return error_page(str(exc), 413, viewer=viewer)
            if not signer(request).check_csrf(viewer.session, form.get("csrf")):
                return error_page(
                    "This form is missing its security token or it is stale. "
                    "Go back, reload the page and try again.",
                    403,
                    viewer=viewer,
                )
            request.state.form = form
        try:
            return await handler(request, viewer)
        except Exception:
            log.exception("console error on %s %s", request.method, request.url.path)
            return error_page("The server failed to do that; see its log.", 500, viewer=viewer)

    return wrapped


async def home(request: Request) -> Response:
    return RedirectResponse("/console/keys", status_code=303)


async def list_keys(request: Request, viewer: Viewer) -> Response:
    return await _keys_page(request, viewer)


async def _keys_page(request: Request, viewer: Viewer, status: int = 200, **extra: Any) -> Response:
    ctx = context(request)
    await ctx.accounts.ledger.flush()  # spend and last use include every answered request
    keys = await ctx.keys.list(user=None if viewer.admin else viewer.user_name)
    return page("keys.html", status, viewer=viewer, keys=keys, form={}, error=None, **extra)


def _limits(form: dict[str, str]) -> dict[str, Any]:
    """Models, credit, rpm and tpm from the create form; blank fields mean no limit."""
    limits: dict[str, Any] = {}
    models = [m.strip() for m in form.get("models", "").split(",") if m.strip()]
    if models:
        limits["models"] = models
    if form.get("credit", "").strip():
        try:
            limits["credit_pusd"] = parse_usd(form["credit"].strip())
        except MoneyError as exc:
            raise KeyError_(f"Credit: {exc}") from None
    for name in ("rpm", "tpm"):
        text = form.get(name, "").strip()
        if text:
            if not text.isdigit() or int(text) > 2**31 - 1:
                raise KeyError_(f"{name.upper()} must be a whole number of 0 or more.")
            limits[name] = int(text)
    return limits


async def create_key(request: Request, viewer: Viewer) -> Response:
    ctx = context(request)
    form: dict[str, str] = request.state.form
    name = form.get("name", "").strip()
    owner = form.get("user", "").strip() if viewer.admin else ""
    try:
        limits = _limits(form)
        secret = await ctx.keys.create(name, user=owner or viewer.user_name, **limits)
    except KeyError_ as exc:
        return await _keys_page(
            request, viewer, 400, **{"form": form, "error": _sentence(str(exc))}
        )
    return _secret_page(request, ctx, viewer, await ctx.keys.get(name), secret, "created")


def _sentence(text: str) -> str:
    text = text[:1].upper() + text[1:]
    return text if text.endswith(".") else text + "."


def _secret_page(
    request: Request,
    ctx: AppContext,
    viewer: Viewer | None,
    key: KeyRecord,
    secret: str,
    action: str,
) -> Response:
    models = [m.id for m in ctx.router.models() if key.allows(m.id)]
    return page(
        "secret.html",
        viewer=viewer,
        key=key,
        secret=secret,
        action=action,
        model=models[0] if models else "MODEL",
        base_url=str(request.base_url).rstrip("/") + "/v1",
    )


async def _owned(request: Request, viewer: Viewer) -> KeyRecord | None:
    """The key named in the path if this viewer may see it; others' keys look absent."""
    try:
        key = await context(request).keys.get(request.path_params["name"])
    except KeyNotFound:
        return None
    return key if viewer.may_see(key) else None


def _missing(request: Request, viewer: Viewer) -> Response:
    name = request.path_params["name"]
    return error_page(f"You have no key named “{name}”.", 404, viewer=viewer)


async def confirm(request: Request, viewer: Viewer) -> Response:
    key = await _owned(request, viewer)
    if key is None:
        return _missing(request, viewer)
    action = request.path_params["action"]
    if action not in ("reset", "revoke"):
        return error_page("There is no such action on a key.", 404, viewer=viewer)
    return page("confirm.html", viewer=viewer, key=key, action=action)


async def reset_key(request: Request, viewer: Viewer) -> Response:
    key = await _owned(request, viewer)
    if key is None:
        return _missing(request, viewer)
    ctx = context(request)
    secret = await ctx.keys.reset(key.name)
    # A key session names its key by prefix, which just changed: resetting it signs you out.
    own = viewer.signed_in_with(key)
    fresh = await ctx.keys.get(key.name)
    return _secret_page(request, ctx, None if own else viewer, fresh, secret, "reset")


async def revoke_key(request: Request, viewer: Viewer) -> Response:
    key = await _owned(request, viewer)
    if key is None:
        return _missing(request, viewer)
    await context(request).keys.revoke(key.name)
    if viewer.signed_in_with(key):
        return to_login()
    return await _keys_page(request, viewer, notice=f"Key “{key.name}” is revoked.")


routes = [
    Route("/console", home, methods=["GET"]),
    Route("/console/", home, methods=["GET"]),
    Route("/console/keys", signed_in(list_keys), methods=["GET"]),
    Route("/console/keys", signed_in(create_key), methods=["POST"]),
    Route("/console/keys/{name}/{action}", signed_in(confirm), methods=["GET"]),
    Route("/console/keys/{name}/reset", signed_in(reset_key), methods=["POST"]),
    Route("/console/keys/{name}/revoke", signed_in(revoke_key), methods=["POST"]),
]


async def not_found(request: Request) -> Response:
    """Any other path under /console/: a 404 page in words (never the API's JSON)."""
    try:
        viewer = await current_viewer(request)
    except Exception:
        log.exception("console: the viewer of a 404 page could not be read")
        viewer = None
    return error_page(
        f"There is no console page at “{request.url.path}”. Check the address, or use the links "
        "at the top of the page.",
        404,
        viewer=viewer,
        title="Page not found",
    )


# Last: static files, then everything else under /console/ is a 404 page.
tail_routes = [
    Route("/console/static/{name}", static, methods=["GET"]),
    Route("/console/{path:path}", not_found, methods=["GET", "POST", "PUT", "PATCH", "DELETE"]),
]
