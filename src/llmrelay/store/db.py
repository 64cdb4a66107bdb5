"""Database engine, SQLite pragmas, and running the Alembic migrations."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event, make_url, text
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

_MIGRATIONS = Path(__file__).parent / "migrations"
# Several instances starting at once on one PostgreSQL database migrate one after the other.
_MIGRATION_LOCK = 0x6C6C6D72  # "llmr"


def sync_url(url: str) -> str:
    """The synchronous driver URL Alembic migrates with."""
    return url.replace("sqlite+aiosqlite://", "sqlite://").replace(
        "postgresql+asyncpg://", "postgresql+psycopg://"
    )


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=5000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def migrate(url: str) -> None:
    """Bring the schema to the newest revision (creates the database on first start)."""
    if url.startswith("sqlite"):
        path = url.split(":///", 1)[1] if ":///" in url else ""
        if path and path != ":memory:":
            Path(path).parent.mkdir(parents=True, exist_ok=True)
    engine = create_engine(sync_url(url))
    if url.startswith("sqlite"):
        event.listen(engine, "connect", _sqlite_pragmas)
    config = Config()
    config.set_main_option("script_location", str(_MIGRATIONS))
    try:
        with engine.begin() as connection:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
            config.attributes["connection"] = connection
            command.upgrade(config, "head")
    finally:
        engine.dispose()


def _null(value: None) -> None:
    return None


def bind_plainly() -> None:
    """Have sqlite3 bind bools and None without its adaptation protocol (idempotent).

    sqlite3 binds exact ints, floats, strs and bytearrays directly; any other value (a ledger
    row has two bools and up to three Nones) goes through ``microprotocols_adapt``, which, when
    no adapter is registered for the type, looks up ``__adapt__`` on the protocol and
    ``__conform__`` on the value, each miss raising and clearing an AttributeError with a
    formatted message: a quarter of the ledger writer's instructions. A registered adapter is
    found before those lookups. What is bound does not change (a bool is bound as its int,
    None as NULL, as before), so the registration, which is process-wide, is safe for every
    other sqlite3 user in the process.
    """
    sqlite3.register_adapter(bool, int)
    sqlite3.register_adapter(type(None), _null)


class Database:
    def __init__(self, url: str) -> None:
        self.url = url
        self.engine: AsyncEngine = create_async_engine(url)
        if url.startswith("sqlite"):
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self.session = async_sessionmaker(self.engine, expire_on_commit=False)

    def sqlite_writer(self) -> sqlite3.Connection | None:
        """For SQLite, a plain sqlite3 connection to the same file for one writer thread at a
        time (autocommit mode: the caller says BEGIN and COMMIT). A whole transaction then
        runs on a worker thread in one hop, where aiosqlite hops to its thread once per
        statement, and without SQLAlchemy's work per statement."""
        if not self.url.startswith("sqlite"):
            return None
        path = make_url(self.url).database or ":memory:"
        bind_plainly()
        connection = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        _sqlite_pragmas(connection, None)
        return connection

    async def close(self) -> None:
        await self.engine.dispose()
