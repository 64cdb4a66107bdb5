"""Shared CLI plumbing: settings from flags, and running one store operation."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable, Iterable, Sequence
from pathlib import Path
from typing import TypeVar

from llmrelay.accounting.money import Money, MoneyError, parse_price, parse_usd
from llmrelay.settings import Settings, load_settings
from llmrelay.store.db import Database, migrate

T = TypeVar("T")
MAX_COUNT = 2**31 - 1  # an Integer column


def add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="where the database lives")
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in --data-dir)")


def settings_from(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        data_dir=args.data_dir,
        database_url=args.database_url,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        relaxed_json=getattr(args, "relaxed_json", None),
        log_level=getattr(args, "log_level", None),
        redis_url=getattr(args, "redis_url", None),
    )


def with_database(settings: Settings, operation: Callable[[Database], Awaitable[T]]) -> T:
    migrate(settings.resolved_database_url)

    async def run() -> T:
        db = Database(settings.resolved_database_url)
        try:
            return await operation(db)
        finally:
            await db.close()

    return asyncio.run(run())


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]]) -> None:
    """Columns as wide as their widest cell; numbers (and amounts) right-aligned."""
    cells = [[str(c) for c in headers], *([_cell(c) for c in row] for row in rows)]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    right = [
        all(_numeric(row[i]) for row in cells[1:]) and len(cells) > 1 for i in range(len(headers))
    ]
    for row in cells:
        parts = [
            c.rjust(w) if r else c.ljust(w) for c, w, r in zip(row, widths, right, strict=True)
        ]
        print("  ".join(parts).rstrip())


def _cell(value: object) -> str:
    return "-" if value is None else str(value)


def _numeric(text: str) -> bool:
    return text == "-" or text.lstrip("-$").replace(".", "", 1).replace(",", "").isdigit()


def usd_arg(text: str) -> Money:
    """An argparse type: an amount in USD, exact."""
    try:
        return parse_usd(text)
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def count_arg(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if not 0 <= value <= MAX_COUNT:
        raise argparse.ArgumentTypeError(f"{text!r} is not between 0 and {MAX_COUNT}")
    return value


def price_arg(text: str) -> Money:
    """An argparse type: USD per million tokens, as picodollars per token."""
    try:
        return parse_price(text)
    except MoneyError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
