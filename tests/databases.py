"""Test databases: a fresh SQLite file, or a fresh PostgreSQL database created and dropped.

PostgreSQL is found at ``TEST_POSTGRES_URL`` (default: the CI service on 127.0.0.1:5432).
When it cannot be reached the PostgreSQL cases are skipped, except under ``CI=1``, where
they fail: CI must never pass without having run them.
"""

from __future__ import annotations

import asyncio
import os
import uuid
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import pytest
from sqlalchemy.engine import make_url

from llmrelay.store.db import Database

POSTGRES_URL = os.environ.get("TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/test")
BACKENDS = ("sqlite", "postgresql")
T = TypeVar("T")


def _admin_connection():  # type: ignore[no-untyped-def]
    import psycopg

    try:
        return psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except psycopg.OperationalError as exc:
        message = f"PostgreSQL at {POSTGRES_URL} is unreachable: {exc}"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)


@contextmanager
def fresh_postgres() -> Iterator[str]:
    """The URL of a new, empty database; dropped afterwards (connections and all)."""
    conn = _admin_connection()
    name = f"llmrelay_test_{uuid.uuid4().hex[:12]}"
    conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = make_url(POSTGRES_URL).set(database=name)
        yield url.render_as_string(hide_password=False)
    finally:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        conn.close()


@contextmanager
def fresh_database(backend: str, tmp: Path) -> Iterator[str]:
    """A database URL as a user would write it (``postgresql://``, ``sqlite:///``)."""
    if backend == "sqlite":
        yield f"sqlite:///{tmp / 'llmrelay.db'}"
    else:
        with fresh_postgres() as url:
            yield url


@contextmanager
def migrated_database(backend: str, tmp: Path) -> Iterator[str]:
    """A migrated, empty database (async driver URL)."""
    from llmrelay.settings import async_database_url
    from llmrelay.store.db import migrate

    with fresh_database(backend, tmp) as raw:
        resolved = async_database_url(raw)
        migrate(resolved)
        yield resolved


def run_on(url: str, work: Callable[[Database], Awaitable[T]]) -> T:
    """``work`` on a :class:`Database` at ``url``, in a fresh event loop."""

    async def main() -> T:
        db = Database(url)
        try:
            return await work(db)
        finally:
            await db.close()

    return asyncio.run(main())
