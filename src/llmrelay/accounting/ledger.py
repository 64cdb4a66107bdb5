"""Durable ledger rows with group commit.

:meth:`LedgerWriter.record` queues a row and returns once the transaction holding it has
COMMITTED. One background task writes the queue: it waits ``max_delay`` seconds after the first
row of a batch (or until ``max_batch`` rows wait), then writes the whole batch in one
transaction: the ledger rows, and per user and per key the sum of their costs
(``users.balance_pusd -= cost, users.spent_pusd += cost``; ``api_keys.spent_pusd += cost``;
a NULL balance, unlimited, stays NULL). Rows that arrive while a transaction runs form the
next batch, so under load one commit carries many requests. A batch goes through the driver
itself (sqlite3's executemany on a worker thread; asyncpg's COPY on PostgreSQL), not through
SQLAlchemy's per-row parameter processing.

A caller that awaits :meth:`~LedgerWriter.record` before sending the last bytes of a response
guarantees that the row survives a kill -9 of the process right afterwards: PostgreSQL commits
are durable, and SQLite in WAL mode with ``synchronous=NORMAL`` (``store.db``) keeps every
committed transaction through a process crash (only a power loss may drop the newest ones).

A batch that fails is retried row by row, each in its own transaction, so only the callers of
the rows that fail on their own see the error. :meth:`~LedgerWriter.stop` writes what is queued
before it returns.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
from collections import defaultdict
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from operator import attrgetter
from typing import Any

from sqlalchemy.ext.asyncio import AsyncConnection

from llmrelay.accounting.money import Money
from llmrelay.store.db import Database

log = logging.getLogger("llmrelay.ledger")

MAX_BATCH = 256
MAX_DELAY = 0.002  # seconds a batch waits for more rows after its first one


def _now() -> datetime:
    return datetime.now(UTC)


@dataclass(slots=True)  # not frozen: a frozen dataclass's __init__ costs twice as much
class LedgerRow:
    """One request, as the ``ledger`` table holds it."""

    request_id: str
    model: str
    status: int  # the HTTP status the client got
    key_id: int | None = None
    user_id: int | None = None
    channel: str | None = None
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    search_calls: int = 0
    estimated: bool = False
    stream: bool = False
    cost_pusd: Money = 0
    latency_ms: int = 0
    ttft_ms: int | None = None
    error_type: str | None = None
    created_at: datetime = field(default_factory=_now)


_FIELDS = tuple(f.name for f in fields(LedgerRow))
_as_tuple = attrgetter(*_FIELDS)  # created_at comes last


@dataclass(slots=True)
class _Pending:
    row: LedgerRow
    done: asyncio.Future[None]


def _user_costs(rows: list[LedgerRow]) -> list[tuple[int, int]]:
    """(cost, user id) per user, in id order (one lock order for every writer: no deadlocks)."""
    sums: dict[int, int] = defaultdict(int)
    for row in rows:
        if row.user_id is not None and row.cost_pusd:
            sums[row.user_id] += row.cost_pusd
    return [(sums[ident], ident) for ident in sorted(sums)]


def _key_uses(rows: list[LedgerRow]) -> list[tuple[int, datetime, int]]:
    """(cost, newest request time, key id) per key, in id order. Every key that made a request
    is updated, free or not: the same statement keeps ``last_used_at`` current at no extra
    cost."""
    costs: dict[int, int] = defaultdict(int)
    newest: dict[int, datetime] = {}
    for row in rows:
        ident = row.key_id
        if ident is None:
            continue
        costs[ident] += row.cost_pusd
        if ident not in newest or row.created_at > newest[ident]:
            newest[ident] = row.created_at
    return [(costs[ident], newest[ident], ident) for ident in sorted(costs)]


# The batch is written with the driver's own executemany (SQLite) or COPY (PostgreSQL):
# SQLAlchemy's per-row parameter processing cost more than the database's work.
_CHARGE_USERS = (
    "UPDATE users SET balance_pusd = balance_pusd - {0}, spent_pusd = spent_pusd + {0} "
    "WHERE id = {1}"
)
_CHARGE_KEYS = (
    "UPDATE api_keys SET spent_pusd = spent_pusd + {0}, last_used_at = {1} WHERE id = {2}"
)


def _sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text (UTC wall time; reports compare these strings)."""
    return value.replace(tzinfo=None).isoformat(" ", "microseconds")


def _sqlite_insert(count: int) -> str:
    """One INSERT of ``count`` rows: sqlite3's executemany releases and retakes the GIL for
    every row, which a busy event loop on the other thread pays for; one statement does it
    once. Statements of recent sizes stay prepared in sqlite3's statement cache."""
    row = f"({', '.join('?' * len(_FIELDS))})"
    return f"INSERT INTO ledger ({', '.join(_FIELDS)}) VALUES {', '.join([row] * count)}"


def _write_rows_sqlite(connection: sqlite3.Connection, rows: list[LedgerRow]) -> None:
    """One transaction, on a worker thread: the rows and the balance updates they make."""
    values: list[Any] = []
    for row in rows:
        fields_ = _as_tuple(row)
        values += fields_[:-1]
        values.append(_sqlite_time(fields_[-1]))
    keys = [(cost, _sqlite_time(at), ident) for cost, at, ident in _key_uses(rows)]
    connection.execute("BEGIN IMMEDIATE")
    try:
        connection.execute(_sqlite_insert(len(rows)), values)
        if users := _user_costs(rows):
            connection.executemany(_CHARGE_USERS.format("?", "?"), [(c, c, i) for c, i in users])
        if keys:
            connection.executemany(_CHARGE_KEYS.format("?", "?", "?"), keys)
        connection.execute("COMMIT")
    except BaseException:
        if connection.in_transaction:
            connection.execute("ROLLBACK")
        raise


async def write_rows(conn: AsyncConnection, rows: list[LedgerRow]) -> None:
    """The rows and their balance updates on PostgreSQL (asyncpg), in one transaction of its
    own on ``conn``'s driver connection."""
    raw = await conn.get_raw_connection()
    driver: Any = raw.driver_connection
    async with driver.transaction():
        # Balances first, in id order; COPY's foreign-key checks take only share locks.
        if users := _user_costs(rows):
            await driver.executemany(_CHARGE_USERS.format("$1", "$2"), users)
        if keys := _key_uses(rows):
            await driver.executemany(_CHARGE_KEYS.format("$1", "$2", "$3"), keys)
        records = [_as_tuple(row) for row in rows]
        await driver.copy_records_to_table("ledger", records=records, columns=_FIELDS)


def _consume(future: asyncio.Future[None]) -> None:
    """Retrieve the outcome of a row nobody awaits any more (its caller was cancelled)."""
    if not future.cancelled():
        future.exception()


class LedgerWriter:
    """Group-committing writer of ledger rows; one per process and database."""

    def __init__(
        self, db: Database, *, max_batch: int = MAX_BATCH, max_delay: float = MAX_DELAY
    ) -> None:
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be at least 1 and max_delay not negative")
        self.db = db
        self._sqlite: sqlite3.Connection | None = None  # opened by start()
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.transactions = 0  # committed transactions (batches and row-by-row retries)
        self.rows = 0  # rows committed
        self.failed = 0  # rows that could not be written
        self._queue: list[_Pending] = []
        self._writing: list[_Pending] = []  # the batch in flight
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def counts(self) -> dict[str, int]:
        """For /metrics: rows committed, transactions committed, rows that failed."""
        return {"rows": self.rows, "transactions": self.transactions, "failed_rows": self.failed}

    @property
    def running(self) -> bool:
        return self._task is not None and not self._closing

    async def start(self) -> None:
        if self._task is None:
            if self._sqlite is None:
                self._sqlite = self.db.sqlite_writer()
            self._closing = False
            self._task = asyncio.create_task(self._run(), name="llmrelay-ledger")

    async def stop(self) -> None:
        """Write every queued row, then stop."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        self._full.set()
        try:
            await self._task
        finally:
            self._task = None
            if self._sqlite is not None:
                self._sqlite.close()
                self._sqlite = None

    async def __aenter__(self) -> LedgerWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def submit(self, row: LedgerRow) -> asyncio.Future[None]:
        """Queue ``row``; the future is done once the row is committed (or failed).

        The row is written even if nobody awaits the future."""
        if not self.running:
            raise RuntimeError("the ledger writer is not running")
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        done.add_done_callback(_consume)
        self._queue.append(_Pending(row, done))
        self._wakeup.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()
        return done

    async def record(self, row: LedgerRow) -> None:
        """Write ``row``; return once it is committed, or raise why it could not be.

        Cancelling the caller does not cancel the write: the writer holds the row, and a
        cancelled future only means nobody waits for its outcome (no shield needed)."""
        await self.submit(row)

    # -- the writer task ----------------------------------------------------------------------

    async def _run(self) -> None:
        try:
            while True:
                if not self._queue:
                    if self._closing:
                        return
                    self._wakeup.clear()
                    await self._wakeup.wait()
                    continue
                await self._gather()
                batch = self._queue[: self.max_batch]
                del self._queue[: self.max_batch]
                if len(self._queue) < self.max_batch and not self._closing:
                    self._full.clear()
                self._writing = batch
                await self._write(batch)
                self._writing = []
        finally:
            self._abandon()

    async def _gather(self) -> None:
        """Let more rows join the batch: up to ``max_delay``, or until ``max_batch`` wait."""
        if self.max_delay and len(self._queue) < self.max_batch and not self._closing:
            try:
                async with asyncio.timeout(self.max_delay):
                    await self._full.wait()
            except TimeoutError:
                pass

    def _abandon(self) -> None:
        """The task ended (stopped, cancelled or broken): no caller may wait forever."""
        pending = self._writing + self._queue
        self._writing, self._queue = [], []
        for item in pending:
            if not item.done.done():
                item.done.set_exception(RuntimeError("the ledger writer stopped"))

    async def _commit(self, rows: list[LedgerRow]) -> None:
        if self._sqlite is not None:
            await asyncio.to_thread(_write_rows_sqlite, self._sqlite, rows)
        else:
            async with self.db.engine.connect() as conn:
                await write_rows(conn, rows)
        self.transactions += 1
        self.rows += len(rows)

    async def _write(self, batch: list[_Pending]) -> None:
        try:
            await self._commit([item.row for item in batch])
        except Exception as exc:
            if len(batch) == 1:
                self._fail(batch[0], exc)
                return
            log.warning(
                "ledger batch of %d rows failed (%s); writing them one by one", len(batch), exc
            )
            for item in batch:
                await self._write_one(item)
            return
        for item in batch:
            if not item.done.done():
                item.done.set_result(None)

    async def _write_one(self, item: _Pending) -> None:
        try:
            await self._commit([item.row])
        except Exception as exc:
            self._fail(item, exc)
        else:
            if not item.done.done():
                item.done.set_result(None)

    def _fail(self, item: _Pending, exc: Exception) -> None:
        self.failed += 1
        log.error("ledger row for request %s not written: %s", item.row.request_id, exc)
        if not item.done.done():
            item.done.set_exception(exc)
