"""Console: the usage page (tables and charts per day and model, recent requests) and its CSV
export. Users see their own usage; admins everyone's, and may narrow it to a user or a key."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time
from typing import Any

from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from llmrelay.accounting.money import PUSD_PER_USD
from llmrelay.api.context import context
from llmrelay.console.pages import error_page, page
from llmrelay.console.usage_export import export_csv
from llmrelay.console.usage_filters import QUICK_DAYS, FilterError, Filters, parse_filters
from llmrelay.console.views import Viewer, signed_in
from llmrelay.store.keys import KeyRecord
from llmrelay.store.usage import UsageRow, UsageStore, total
from llmrelay.store.users import UserStore

RECENT = 50  # requests in the recent-requests table
CHART_MODELS = 6  # the costliest models get a series each; the rest are summed as one


@dataclass(slots=True)
class Report:
    """The numbers the page shows, all from one query (plus the recent rows)."""

    days: list[UsageRow]  # every day of the period, in order (group: ISO day)
    models: list[UsageRow]  # costliest first (group: model)
    total: UsageRow
    chart: dict[str, Any] = field(default_factory=dict)

    @property
    def active_days(self) -> list[UsageRow]:
        """Days with requests, newest first (the table; the chart shows every day)."""
        return [d for d in reversed(self.days) if d.requests]


def build_report(filters: Filters, cells: list[tuple[date, UsageRow]]) -> Report:
    """Per day and per model sums from per (day, model) ones, and the charts' series."""
    days = {day: UsageRow(day.isoformat()) for day in filters.period.each_day()}
    models: dict[str, UsageRow] = {}
    for day, cell in cells:
        days.setdefault(day, UsageRow(day.isoformat())).add(cell)
        models.setdefault(cell.group, UsageRow(cell.group)).add(cell)
    ordered = sorted(models.values(), key=lambda r: (-r.cost_pusd, -r.requests, r.group))
    per_day = [days[d] for d in sorted(days)]
    report = Report(per_day, ordered, total(ordered))
    report.chart = _chart(sorted(days), ordered, cells)
    return report


def _chart(days: list[date], models: list[UsageRow], cells: list[tuple[date, UsageRow]]) -> Any:
    """Series for usage.js: x in seconds (UTC midnights); one series per model (the costliest
    few, then "other models") for requests and cost, prompt and completion tokens."""
    names = [m.group for m in models[:CHART_MODELS]]
    other = "other models" if len(models) > CHART_MODELS else None
    index = {d: i for i, d in enumerate(days)}
    series = [*names, *([other] if other else [])]
    requests = {name: [0] * len(days) for name in series}
    cost = {name: [0] * len(days) for name in series}
    prompt, completion = [0] * len(days), [0] * len(days)
    for day, cell in cells:
        i = index[day]
        name = cell.group if cell.group in requests else other
        assert name is not None
        requests[name][i] += cell.requests
        cost[name][i] += cell.cost_pusd
        prompt[i] += cell.prompt_tokens
        completion[i] += cell.completion_tokens
    return {
        "x": [int(datetime.combine(d, time(), tzinfo=UTC).timestamp()) for d in days],
        "models": series,
        "requests": [requests[name] for name in series],
        # Display only: the tables and the CSV keep exact picodollars.
        "cost": [[c / PUSD_PER_USD for c in cost[name]] for name in series],
        "prompt": prompt,
        "completion": completion,
    }


def _params(request: Request) -> dict[str, str]:
    return {name: request.query_params[name] for name in request.query_params}


async def _choices(request: Request, viewer: Viewer) -> tuple[list[str], list[KeyRecord]]:
    """The users and keys the filter form offers."""
    ctx = context(request)
    if not viewer.admin:
        return [], await ctx.keys.list(user=viewer.user_name)
    users = await UserStore(ctx.db).list()
    return [u.name for u in users], await ctx.keys.list()


async def usage_page(request: Request, viewer: Viewer) -> Response:
    ctx = context(request)
    params = _params(request)
    users, keys = await _choices(request, viewer)
    common: dict[str, Any] = {"viewer": viewer, "nav": "usage", "users": users, "keys": keys}
    common |= {"quick_days": QUICK_DAYS, "params": params}
    common["retention_days"] = ctx.settings.ledger_retention_days
    try:
        filters = await parse_filters(params, viewer, ctx.keys, UserStore(ctx.db))
    except FilterError as exc:
        return page("usage.html", exc.status, error=str(exc), filters=None, **common)
    await ctx.accounts.ledger.flush()  # include every request this process answered
    store = UsageStore(ctx.db)
    period = filters.period
    where: dict[str, Any] = {"key_id": filters.key_id, "user_id": filters.user_id}
    cells = await store.usage_by_day_and_model(period.since, period.until, **where)
    recent = await store.requests(period.since, period.until, limit=RECENT, **where)
    report = build_report(filters, cells)
    return page("usage.html", error=None, filters=filters, report=report, recent=recent, **common)


async def usage_csv(request: Request, viewer: Viewer) -> Response:
    ctx = context(request)
    try:
        filters = await parse_filters(_params(request), viewer, ctx.keys, UserStore(ctx.db))
        kind = request.query_params.get("kind", "requests")
        await ctx.accounts.ledger.flush()
        return export_csv(UsageStore(ctx.db), filters, kind)
    except FilterError as exc:
        return error_page(str(exc), exc.status, viewer=viewer, nav="usage")


routes = [
    Route("/console/usage", signed_in(usage_page), methods=["GET"]),
    Route("/console/usage.csv", signed_in(usage_csv), methods=["GET"]),
]
