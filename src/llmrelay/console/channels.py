"""Console: the channels page (list, add, edit, enable, disable, remove, test).

Every check and change goes through ``routing.manage``, as ``/admin/channels`` does, so the
console and the JSON API cannot disagree; a change rebuilds this server's routes at once.
Upstream keys never reach a page: only how many there are, and the last characters of long ones.
"""

from __future__ import annotations

from dataclasses import dataclass
from urllib.parse import quote

from starlette.requests import Request
from starlette.responses import RedirectResponse, Response

from llmrelay.api.context import context
from llmrelay.console import channel_form
from llmrelay.console.pages import error_page, page
from llmrelay.console.views import Viewer
from llmrelay.errors import InvalidRequest, LLMRelayError
from llmrelay.routing import manage
from llmrelay.routing.probe import ProbeResult
from llmrelay.routing.router import Router
from llmrelay.settings import ChannelConfig

HOME = "/console/admin/channels"
NOTICES = {
    "added": "Channel “{}” is added and serving. Run its test to check it answers.",
    "updated": "Channel “{}” is saved.",
    "enabled": "Channel “{}” is enabled: its models are served again.",
    "disabled": "Channel “{}” is disabled: its models are no longer served through it.",
    "removed": "Channel “{}” is removed.",
}


@dataclass(frozen=True, slots=True)
class ChannelRow:
    config: ChannelConfig
    source: manage.Source
    keys: str  # how many upstream keys, never the keys
    health: str  # the circuit breaker's state in words


def keys_text(config: ChannelConfig) -> str:
    """How many upstream keys; not even a few characters of one (keys never appear in a
    listing)."""
    count = len(config.keys)
    return "no keys" if count == 0 else "1 key" if count == 1 else f"{count} keys"


def health(router: Router, config: ChannelConfig) -> str:
    if not config.enabled:
        return "disabled"
    breaker = router.breakers.get(config.name)
    if breaker is None or breaker.state == "closed":
        failures = breaker.failures if breaker else 0
        if not failures:
            return "serving"
        return f"serving ({failures} recent failure{'s' if failures > 1 else ''})"
    if breaker.state == "open":
        return f"skipped after failures; tried again in {breaker.retry_in():.0f} s"
    return "being tried again after failures"


async def _list_page(
    request: Request, viewer: Viewer, status: int = 200, **extra: object
) -> Response:
    ctx = context(request)
    rows = [
        ChannelRow(config, source, keys_text(config), health(ctx.router, config))
        for config, source in await manage.listing(ctx.channels)
    ]
    notice = next(
        (
            text.format(request.query_params[code])
            for code, text in NOTICES.items()
            if code in request.query_params
        ),
        None,
    )
    values = {"notice": notice, "result": None, "tested": None, "error": None} | extra
    return page("channels.html", status, viewer=viewer, nav="channels", rows=rows, **values)


def _done(code: str, name: str) -> Response:
    return RedirectResponse(f"{HOME}?{code}={quote(name)}", status_code=303)


def _form_page(
    viewer: Viewer,
    form: dict[str, str],
    editing: ChannelConfig | None = None,
    error: str | None = None,
    status: int = 200,
) -> Response:
    return page(
        "channel_form.html",
        status,
        viewer=viewer,
        nav="channels",
        form=form,
        editing=editing,
        keys=keys_text(editing) if editing else "",
        error=error,
        types=channel_form.TYPES,
        flavors=channel_form.FLAVORS,
        switches=channel_form.SWITCHES,
        numbers=channel_form.NUMBERS,
    )


async def list_channels(request: Request, viewer: Viewer) -> Response:
    return await _list_page(request, viewer)


async def new_channel(request: Request, viewer: Viewer) -> Response:
    return _form_page(viewer, {"enabled": "on"})


async def add_channel(request: Request, viewer: Viewer) -> Response:
    form: dict[str, str] = request.state.form
    try:
        config = await manage.add(context(request).channels, channel_form.to_channel(form))
    except InvalidRequest as exc:
        return _form_page(viewer, form, error=channel_form.message(exc), status=400)
    except LLMRelayError as exc:
        return _form_page(viewer, form, error=exc.message, status=exc.status)
    return _done("added", config.name)


async def _stored(request: Request, viewer: Viewer) -> ChannelConfig | Response:
    """The database channel named in the path, or the page that says why it cannot change."""
    try:
        config, source = await manage.find(context(request).channels, request.path_params["name"])
    except LLMRelayError as exc:
        return error_page(exc.message, exc.status, viewer=viewer, nav="channels")
    if source == "config":
        return error_page(
            f"Channel “{config.name}” is defined in the config file; change it there.",
            409,
            viewer=viewer,
            nav="channels",
        )
    return config


async def edit_form(request: Request, viewer: Viewer) -> Response:
    config = await _stored(request, viewer)
    if isinstance(config, Response):
        return config
    return _form_page(viewer, channel_form.to_form(config), config)


async def edit_channel(request: Request, viewer: Viewer) -> Response:
    config = await _stored(request, viewer)
    if isinstance(config, Response):
        return config
    form: dict[str, str] = request.state.form
    try:
        changes = channel_form.to_channel(form, config)
        await manage.update(context(request).channels, config.name, changes)
    except InvalidRequest as exc:
        return _form_page(viewer, form, config, channel_form.message(exc), 400)
    except LLMRelayError as exc:
        return _form_page(viewer, form, config, exc.message, exc.status)
    return _done("updated", config.name)


async def switch_channel(request: Request, viewer: Viewer) -> Response:
    """Enable or disable (the last part of the path says which)."""
    config = await _stored(request, viewer)
    if isinstance(config, Response):
        return config
    enable = request.url.path.endswith("/enable")
    await manage.update(context(request).channels, config.name, {"enabled": enable})
    return _done("enabled" if enable else "disabled", config.name)


async def confirm_remove(request: Request, viewer: Viewer) -> Response:
    config = await _stored(request, viewer)
    if isinstance(config, Response):
        return config
    return page(
        "admin_confirm.html",
        viewer=viewer,
        nav="channels",
        title=f"Remove channel “{config.name}”?",
        text=(
            "Its models stop being served through it at once (other channels serving the same "
            "models go on). Its settings and upstream keys are deleted."
        ),
        action=f"{HOME}/{quote(config.name)}/remove",
        button="Remove channel",
        fields={},
        back=HOME,
    )


async def remove_channel(request: Request, viewer: Viewer) -> Response:
    config = await _stored(request, viewer)
    if isinstance(config, Response):
        return config
    try:
        await manage.remove(context(request).channels, config.name)
    except LLMRelayError as exc:
        return error_page(exc.message, exc.status, viewer=viewer, nav="channels")
    return _done("removed", config.name)


async def test_channel(request: Request, viewer: Viewer) -> Response:
    """The real round trip of ``channels test``; the page shows its result or why it failed."""
    name = request.path_params["name"]
    result: ProbeResult | None = None
    error, status = None, 200
    try:
        result = await manage.run_test(context(request).channels, name)
    except LLMRelayError as exc:  # no such channel (an upstream failure is in the result)
        error, status = exc.message, exc.status
    except ValueError as exc:  # a provider type this build cannot reach
        error = str(exc)
    return await _list_page(request, viewer, status, result=result, tested=name, error=error)
