"""Shared CLI plumbing: settings from flags, and running one store operation."""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from llmrelay.settings import Settings, load_settings
from llmrelay.store.db import Database, migrate

T = TypeVar("T")


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
