"""``/admin/usage``: requests, tokens and cost per key, user, model or day (admin keys)."""

from __future__ import annotations

from datetime import date
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.api.admin_common import money, query_value, require_admin
from llmrelay.api.io import JSONResponse
from llmrelay.errors import InvalidRequest
from llmrelay.store.usage import BY, UsageRow, UsageStore, total


def _day(request: Request, name: str) -> date | None:
    text = query_value(request, name)
    if text is None:
        return None
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise InvalidRequest(
            f"'{name}' must be a date, YYYY-MM-DD (UTC), not '{text}'.", param=name
        ) from None


def _row(row: UsageRow) -> dict[str, Any]:
    return {**row.to_dict(), "cost": money(row.cost_pusd)}


async def usage(request: Request) -> Response:
    ctx = await require_admin(request)
    by = query_value(request, "by") or "model"
    if by not in BY:
        raise InvalidRequest(f"'by' must be one of {', '.join(BY)}, not '{by}'.", param="by")
    since, until = _day(request, "since"), _day(request, "until")
    if since and until and since > until:
        raise InvalidRequest("'since' is after 'until'.", param="since")
    await ctx.accounts.ledger.flush()  # include every request this process answered
    rows = await UsageStore(ctx.db).usage(by, since, until)
    return JSONResponse(
        {
            "object": "list",
            "by": by,
            "since": since.isoformat() if since else None,
            "until": until.isoformat() if until else None,
            "data": [_row(r) for r in rows],
            "total": _row(total(rows)),
        }
    )


routes = [Route("/admin/usage", usage, methods=["GET"])]
