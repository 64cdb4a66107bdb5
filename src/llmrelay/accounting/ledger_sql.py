"""How a batch of ledger rows reaches each database, in one transaction: the rows, the balance
and spend updates they make, and their journal's mark (``accounting/journal.py``).

A batch goes through the driver itself (one multi-row INSERT on a plain sqlite3 connection, on
a worker thread; asyncpg's COPY on PostgreSQL), not through SQLAlchemy's per-row parameter
processing, which cost more than the database's own work.

A row here is a tuple of :data:`FIELDS`' values, with ``created_at`` as SQLite's DATETIME text
(UTC wall time; reports compare these strings), as the journal holds it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sqlite3
from collections import defaultdict
from collections.abc import AsyncIterator, Iterator, Sequence
from datetime import datetime
from itertools import chain
from typing import Any, Protocol

import asyncpg  # type: ignore[import-untyped]

from llmrelay.store.db import Database

FIELDS = (
    "request_id",
    "model",
    "status",
    "key_id",
    "user_id",
    "channel",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "search_calls",
    "estimated",
    "stream",
    "cost_pusd",
    "latency_ms",
    "ttft_ms",
    "error_type",
    "created_at",
)
Record = tuple[Any, ...]  # the values of FIELDS
_KEY, _USER, _COST, _AT = (
    FIELDS.index(name) for name in ("key_id", "user_id", "cost_pusd", "created_at")
)


def user_costs(rows: Sequence[Record]) -> list[tuple[int, int]]:
    """(cost, user id) per user, in id order (one lock order for every writer: no deadlocks)."""
    sums: dict[int, int] = defaultdict(int)
    for row in rows:
        if row[_USER] is not None and row[_COST]:
            sums[row[_USER]] += row[_COST]
    return [(sums[ident], ident) for ident in sorted(sums)]


def key_uses(rows: Sequence[Record]) -> list[tuple[int, str, int]]:
    """(cost, newest request time, key id) per key, in id order. Every key that made a request
    is updated, free or not: the same statement keeps ``last_used_at`` current."""
    costs: dict[int, int] = defaultdict(int)
    newest: dict[int, str] = {}
    for row in rows:
        ident = row[_KEY]
        if ident is None:
            continue
        costs[ident] += row[_COST]
        if row[_AT] > newest.get(ident, ""):  # the text sorts as the time does
            newest[ident] = row[_AT]
    return [(costs[ident], newest[ident], ident) for ident in sorted(costs)]


def _utc(text: str) -> datetime:
    # With the zone in the text: eight times faster than .replace(tzinfo=UTC) afterwards, and
    # it runs for every row (each has its own microseconds, so caching does not pay).
    return datetime.fromisoformat(text + "+00:00")


_CHARGE_USERS = (
    "UPDATE users SET balance_pusd = balance_pusd - {0}, spent_pusd = spent_pusd + {0} "
    "WHERE id = {1}"
)
_CHARGE_KEYS = (
    "UPDATE api_keys SET spent_pusd = spent_pusd + {0}, last_used_at = {1} WHERE id = {2}"
)
_MARK = (
    "INSERT INTO ledger_journals (instance, seq) VALUES ({0}, {1}) "
    "ON CONFLICT (instance) DO UPDATE SET seq = excluded.seq"
)
_READ_MARK = "SELECT seq FROM ledger_journals WHERE instance = {0}"
_FORGET_MARK = "DELETE FROM ledger_journals WHERE instance = {0}"
SQLITE_ROWS_PER_INSERT = 256  # a power of two (see sqlite_chunks); 18 parameters a row, well
# below SQLite's limit of 32766


class Sink(Protocol):
    """One database's side of the ledger writer."""

    async def write(self, instance: str, last: int, rows: Sequence[Record]) -> None:
        """Commit ``rows`` and mark ``instance``'s journal as written up to sequence number
        ``last``, in one transaction."""
        ...

    async def mark(self, instance: str) -> int:
        """The highest sequence number of ``instance`` the ledger holds (-1: none)."""
        ...

    async def forget(self, instance: str) -> None:
        """Drop ``instance``'s mark (its journal is gone)."""
        ...

    def close(self) -> None: ...


@functools.cache
def _sqlite_insert(count: int) -> str:
    """One INSERT of ``count`` rows: sqlite3's executemany releases and retakes the GIL for
    every row, which the event loop on the other thread pays for; one statement does it once."""
    row = f"({', '.join('?' * len(FIELDS))})"
    return f"INSERT INTO ledger ({', '.join(FIELDS)}) VALUES {', '.join([row] * count)}"


def sqlite_chunks(rows: Sequence[Record]) -> Iterator[Sequence[Record]]:
    """``rows`` in order, in chunks of 256, 128, 64 … 1 rows (largest first): nine statement
    sizes in all, each prepared once and then found in sqlite3's statement cache. Parsing a
    statement of 256 rows' placeholders costs SQLite more than inserting the rows, and batch
    sizes vary, so chunks of any size were parsed anew almost every batch."""
    start, size = 0, SQLITE_ROWS_PER_INSERT
    while start < len(rows):
        while len(rows) - start < size:
            size //= 2
        yield rows[start : start + size]
        start += size


def _write_sqlite(
    connection: sqlite3.Connection, instance: str, last: int, rows: Sequence[Record]
) -> None:
    """On a worker thread: one transaction."""
    connection.execute("BEGIN IMMEDIATE")
    try:
        for chunk in sqlite_chunks(rows):
            connection.execute(_sqlite_insert(len(chunk)), list(chain.from_iterable(chunk)))
        if users := user_costs(rows):
            connection.executemany(_CHARGE_USERS.format("?", "?"), [(c, c, i) for c, i in users])
        if keys := key_uses(rows):
            connection.executemany(_CHARGE_KEYS.format("?", "?", "?"), keys)
        connection.execute(_MARK.format("?", "?"), (instance, last))
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


class SqliteSink:
    """A plain sqlite3 connection used by one worker thread at a time: a whole transaction
    runs in one hop to the thread (aiosqlite would hop once per statement)."""

    def __init__(self, connection: sqlite3.Connection) -> None:
        self.connection = connection

    async def write(self, instance: str, last: int, rows: Sequence[Record]) -> None:
        await asyncio.to_thread(_write_sqlite, self.connection, instance, last, rows)

    async def mark(self, instance: str) -> int:
        def read() -> int:
            found = self.connection.execute(_READ_MARK.format("?"), (instance,)).fetchone()
            return int(found[0]) if found else -1

        return await asyncio.to_thread(read)

    async def forget(self, instance: str) -> None:
        await asyncio.to_thread(self.connection.execute, _FORGET_MARK.format("?"), (instance,))

    def close(self) -> None:
        self.connection.close()


class PostgresSink:
    """asyncpg, on a driver connection of SQLAlchemy's pool."""

    def __init__(self, db: Database) -> None:
        self.db = db

    @contextlib.asynccontextmanager
    async def _driver(self) -> AsyncIterator[asyncpg.Connection]:
        async with self.db.engine.connect() as conn:
            raw = await conn.get_raw_connection()
            yield raw.driver_connection

    async def write(self, instance: str, last: int, rows: Sequence[Record]) -> None:
        async with self._driver() as driver, driver.transaction():
            # Balances first, in id order: one lock order for every writer (no deadlocks).
            if users := user_costs(rows):
                await driver.executemany(_CHARGE_USERS.format("$1", "$2"), users)
            if keys := key_uses(rows):
                stamped = [(cost, _utc(at), ident) for cost, at, ident in keys]
                await driver.executemany(_CHARGE_KEYS.format("$1", "$2", "$3"), stamped)
            records = [(*row[:_AT], _utc(row[_AT])) for row in rows]
            await driver.copy_records_to_table("ledger", records=records, columns=FIELDS)
            await driver.execute(_MARK.format("$1", "$2"), instance, last)

    async def mark(self, instance: str) -> int:
        async with self._driver() as driver:
            found = await driver.fetchval(_READ_MARK.format("$1"), instance)
            return int(found) if found is not None else -1

    async def forget(self, instance: str) -> None:
        async with self._driver() as driver:
            await driver.execute(_FORGET_MARK.format("$1"), instance)

    def close(self) -> None:
        pass


def sink_for(db: Database) -> Sink:
    connection = db.sqlite_writer()
    return SqliteSink(connection) if connection is not None else PostgresSink(db)


def is_bad_row(exc: BaseException) -> bool:
    """Whether ``exc`` says something is wrong with the rows (writing them again cannot
    succeed), as opposed to the database being unreachable or busy (try again later)."""
    return isinstance(
        exc,
        sqlite3.IntegrityError
        | sqlite3.DataError
        | sqlite3.InterfaceError
        | asyncpg.IntegrityConstraintViolationError
        | asyncpg.DataError,
    )
