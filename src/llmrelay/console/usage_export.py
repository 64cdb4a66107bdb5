"""The usage page's CSV export: one row per request (the ledger rows still kept), or one per
UTC day and model (everything, rolled up or not). Numbers are plain: no thousands separators,
costs in USD with all 12 decimals of the picodollar integers (and the integers themselves)."""

from __future__ import annotations

import csv
import io
import string
from collections.abc import AsyncIterator, Iterable
from datetime import UTC
from typing import Any

from starlette.responses import Response, StreamingResponse

from llmrelay.accounting.money import PUSD_PER_USD, Money
from llmrelay.console.usage_filters import FilterError, Filters
from llmrelay.store.usage import SUMS, LedgerEntry, UsageStore

KINDS = ("requests", "daily")
_PAGE = 1000  # ledger rows per query while streaming

REQUEST_COLUMNS = (
    "time",
    "request_id",
    "user",
    "key",
    "model",
    "channel",
    "status",
    "error_type",
    "stream",
    "estimated",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "search_calls",
    "latency_ms",
    "ttft_ms",
    "cost_usd",
    "cost_pusd",
)
DAILY_COLUMNS = ("day", "model", *SUMS[:-1], "cost_usd", "cost_pusd")


def usd_exact(value: Money) -> str:
    """``1234`` picodollars as ``0.000000001234``: every digit, no symbol, no separators."""
    sign = "-" if value < 0 else ""
    whole, frac = divmod(abs(value), PUSD_PER_USD)
    return f"{sign}{whole}.{frac:012d}"


def _text(value: str | None) -> str:
    """Names are chosen by users: keep a spreadsheet from reading one as a formula."""
    if value is None:
        return ""
    return "'" + value if value[:1] in ("=", "+", "-", "@", "\t", "\r") else value


def request_line(row: LedgerEntry) -> list[Any]:
    return [
        row.created_at.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z"),
        _text(row.request_id),
        _text(row.user),
        _text(row.key),
        _text(row.model),
        _text(row.channel),
        row.status,
        _text(row.error_type),
        str(row.stream).lower(),
        str(row.estimated).lower(),
        row.prompt_tokens,
        row.cached_tokens,
        row.completion_tokens,
        row.reasoning_tokens,
        row.search_calls,
        row.latency_ms,
        "" if row.ttft_ms is None else row.ttft_ms,
        usd_exact(row.cost_pusd),
        row.cost_pusd,
    ]


def _csv(lines: Iterable[Iterable[Any]]) -> str:
    out = io.StringIO()
    csv.writer(out, lineterminator="\r\n").writerows(lines)
    return out.getvalue()


async def _request_lines(store: UsageStore, filters: Filters) -> AsyncIterator[str]:
    """The header, then the ledger rows newest first, a page per query (keyset paging, so a
    long export neither holds every row in memory nor skips rows written meanwhile)."""
    yield _csv([REQUEST_COLUMNS])
    period, before = filters.period, None
    while True:
        rows = await store.requests(
            period.since,
            period.until,
            key_id=filters.key_id,
            user_id=filters.user_id,
            before_id=before,
            limit=_PAGE,
        )
        if rows:
            yield _csv(request_line(row) for row in rows)
        if len(rows) < _PAGE:
            return
        before = rows[-1].id


async def _daily_lines(store: UsageStore, filters: Filters) -> AsyncIterator[str]:
    period = filters.period
    cells = await store.usage_by_day_and_model(
        period.since, period.until, key_id=filters.key_id, user_id=filters.user_id
    )
    yield _csv([DAILY_COLUMNS])
    yield _csv(
        [
            day.isoformat(),
            _text(row.group),
            *(getattr(row, name) for name in SUMS[:-1]),
            usd_exact(row.cost_pusd),
            row.cost_pusd,
        ]
        for day, row in cells
    )


_FILE_SAFE = frozenset(string.ascii_letters + string.digits + "-_.")


def filename(filters: Filters, kind: str) -> str:
    parts = ["llmrelay", "usage" if kind == "requests" else "usage-daily"]
    parts += [filters.period.since.isoformat(), "to", filters.period.until.isoformat()]
    # Names are free text: keep to characters every file system and browser takes.
    for extra in (filters.user, filters.key):
        if extra:
            parts.append("".join(c if c in _FILE_SAFE else "_" for c in extra))
    return "-".join(parts) + ".csv"


def export_csv(store: UsageStore, filters: Filters, kind: str) -> Response:
    if kind not in KINDS:
        raise FilterError(f"“kind” must be one of {', '.join(KINDS)}, not “{kind}”.")
    lines = _request_lines(store, filters) if kind == "requests" else _daily_lines(store, filters)
    headers = {
        "Content-Disposition": f'attachment; filename="{filename(filters, kind)}"',
        "Cache-Control": "no-store",
        "X-Content-Type-Options": "nosniff",
    }
    return StreamingResponse(lines, media_type="text/csv; charset=utf-8", headers=headers)
