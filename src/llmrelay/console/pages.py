"""Rendering for the console: the Jinja2 environment, HTML responses, form bodies."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs

from jinja2 import Environment, FileSystemLoader, select_autoescape
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response

from llmrelay.accounting.money import format_usd

HERE = Path(__file__).parent
MAX_FORM_BYTES = 64 * 1024
# Pages never go into shared caches, and the pages that show a secret not into any cache.
NO_STORE = {
    "Cache-Control": "no-store",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
}


def _when(value: datetime | None) -> str:
    if value is None:
        return "—"
    aware = value if value.tzinfo else value.replace(tzinfo=UTC)
    return aware.astimezone(UTC).strftime("%Y-%m-%d %H:%M UTC")


def _usd(value: int | None) -> str:
    return "no limit" if value is None else format_usd(value)


_env = Environment(
    loader=FileSystemLoader(HERE / "templates"),
    autoescape=select_autoescape(["html"]),
    trim_blocks=True,
    lstrip_blocks=True,
)
_env.filters["when"] = _when
_env.filters["usd"] = _usd


def page(template: str, status: int = 200, **values: Any) -> Response:
    html = _env.get_template(template).render(**values)
    return HTMLResponse(html, status_code=status, headers=NO_STORE)


def error_page(message: str, status: int, **values: Any) -> Response:
    return page("error.html", status, message=message, **values)


async def read_form(request: Request) -> dict[str, str]:
    """An ``application/x-www-form-urlencoded`` body: each field's first value."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > MAX_FORM_BYTES:
            raise ValueError("The form is too large.")
    fields = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {name: values[0] for name, values in fields.items()}


STATIC_TYPES = {"console.css": "text/css", "console.js": "text/javascript"}
# The usage page: its script and styles, and uPlot (vendored; MIT, see uplot-LICENSE.txt).
STATIC_TYPES |= {
    "usage.js": "text/javascript",
    "usage.css": "text/css",
    "uplot-1.6.32.min.js": "text/javascript",
    "uplot-1.6.32.min.css": "text/css",
}
# The admin pages (channels, models and prices).
STATIC_TYPES |= {"admin.js": "text/javascript", "admin.css": "text/css"}
# The playground.
STATIC_TYPES |= {"playground.js": "text/javascript", "playground.css": "text/css"}
# Sign-in, account and users pages.
STATIC_TYPES |= {"accounts.css": "text/css"}
_static: dict[str, bytes] = {}


async def static(request: Request) -> Response:
    name = request.path_params["name"]
    if name not in STATIC_TYPES:
        return Response("Not found", status_code=404, media_type="text/plain")
    if name not in _static:
        _static[name] = (HERE / "static" / name).read_bytes()
    headers = {"Cache-Control": "public, max-age=3600"}
    return Response(_static[name], media_type=STATIC_TYPES[name], headers=headers)
