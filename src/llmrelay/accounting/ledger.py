"""Ledger rows: journaled at once, committed to the database in batches.

:meth:`LedgerWriter.record` appends a row to this process's journal (``journal.py``) and
queues it; it does not wait for the database. Once it returns, the row survives a kill -9 of
the process: callers record a response's row before sending its last bytes. One background
task commits the queue: it waits ``max_delay`` seconds after the first row of a batch (or
until ``max_batch`` rows wait), then writes the whole batch in one transaction
(``ledger_sql.py``): the ledger rows; per user and per key the sum of their costs
(``users.balance_pusd -= cost, users.spent_pusd += cost``; ``api_keys.spent_pusd += cost``;
a NULL balance, unlimited, stays NULL); and the journal's mark. Rows that arrive while a
transaction runs form the next batch.

Nothing that enforces a limit waits for these commits: the limiter (``limits.py``) counts a
settled cost at once. Reports call :meth:`LedgerWriter.flush` first, so they include every
request this process has answered.

Failures. A batch the database refuses is written again row by row, each in its own
transaction; a row refused for what it holds (a constraint) is dropped and logged, and counted
in ``failed_rows``. When the database cannot be reached, rows stay queued (and journaled) and
the writer tries again, waiting longer each time, up to :data:`MAX_BACKOFF` seconds. At start,
and every :data:`ADOPT_EVERY` seconds, the writer adopts the journals of dead processes that
shared its journal directory and writes the rows their database lacks.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import NamedTuple

from llmrelay.accounting.journal import Journal, Orphan, orphans
from llmrelay.accounting.ledger_sql import FIELDS, Record, Sink, is_bad_row, sink_for
from llmrelay.accounting.money import Money
from llmrelay.errors import ServiceUnavailable
from llmrelay.store.db import Database

log = logging.getLogger("llmrelay.ledger")

MAX_BATCH = 2048
# Seconds a batch waits for more rows after its first one. Nobody waits for a commit, and each
# transaction has a fixed cost (on PostgreSQL several round trips, tens of µs of CPU each), so
# batches are made large: at 4,000 requests a second, one transaction carries 400 rows.
MAX_DELAY = 0.1
MAX_BACKOFF = 30.0  # seconds between tries while the database is unreachable
ADOPT_EVERY = 60.0  # seconds between looks for the journals of dead processes
FLUSH_PATIENCE = 5.0  # seconds a report waits for the queued rows


class LedgerRow(NamedTuple):
    """One request, as the ``ledger`` table holds it (a tuple: it goes to the journal and the
    database as it is, with no conversion per request)."""

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
    created_at: datetime | None = None  # None: when it is recorded


assert LedgerRow._fields == FIELDS


class _Clock:
    """The time now as SQLite DATETIME text, the date and time of day formatted once a second."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def __call__(self) -> str:
        second, fraction = divmod(time.time_ns() // 1000, 1_000_000)
        if second != self._second:
            self._second = second
            self._prefix = datetime.fromtimestamp(second, UTC).strftime("%Y-%m-%d %H:%M:%S.")
        # (An f-string with a format spec costs more.)
        return "%s%06d" % (self._prefix, fraction)  # noqa: UP031


def _sqlite_time(value: datetime) -> str:
    """SQLAlchemy's SQLite DATETIME text: UTC wall time (reports compare these strings)."""
    if value.tzinfo is None:
        value = value.replace(tzinfo=UTC)  # a naive time is taken to be UTC already
    elif value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    return value.isoformat(" ", "microseconds")[:26]  # without "+00:00"


class _Unreachable(Exception):
    """The database could not take the rest of a batch: its first ``done`` rows are handled
    (committed or refused), the others stay queued."""

    def __init__(self, done: int = 0) -> None:
        super().__init__(done)
        self.done = done


@dataclass(slots=True)
class _Waiter:
    seq: int
    done: asyncio.Future[None]


class LedgerWriter:
    """Journaling, batch-committing writer of ledger rows; one per process and database."""

    def __init__(
        self,
        db: Database,
        journal_dir: Path,
        *,
        max_batch: int = MAX_BATCH,
        max_delay: float = MAX_DELAY,
        adopt_every: float = ADOPT_EVERY,
    ) -> None:
        if max_batch < 1 or max_delay < 0:
            raise ValueError("max_batch must be at least 1 and max_delay not negative")
        self.db = db
        self.journal = Journal(journal_dir)
        self.now = _Clock()  # the time now, as rows record it
        self.max_batch = max_batch
        self.max_delay = max_delay
        self.adopt_every = adopt_every
        self.transactions = 0  # committed transactions
        self.rows = 0  # rows committed (adopted ones included)
        self.failed = 0  # rows lost: refused by the database, or their journal write failed
        self._sink: Sink | None = None
        self._seq = -1  # the last sequence number given out: the queue's last row's
        self._queue: list[Record] = []
        self._waiters: list[_Waiter] = []
        self._wakeup = asyncio.Event()
        self._full = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self._backoff = 0.0
        self._next_adoption = 0.0

    def counts(self) -> dict[str, int]:
        """For /metrics: rows committed, transactions committed, rows lost, rows queued now."""
        return {
            "rows": self.rows,
            "transactions": self.transactions,
            "failed_rows": self.failed,
            "queued_rows": len(self._queue),
        }

    @property
    def running(self) -> bool:
        return self._task is not None and not self._closing

    async def start(self) -> None:
        """Open the journal, write the rows of dead processes' journals, start writing."""
        if self._task is not None:
            return
        self._sink = sink_for(self.db)
        self.journal.open()
        self._closing = False
        await self._adopt()
        self._task = asyncio.create_task(self._run(), name="llmrelay-ledger")

    async def stop(self) -> None:
        """Write every queued row, then stop. Rows the database could not take stay in the
        journal, for the next process to adopt."""
        if self._task is None:
            return
        self._closing = True
        self._wakeup.set()
        self._full.set()
        try:
            await self._task
        finally:
            self._task = None
            self._release_waiters()
            everything_written = not self._queue
            self.journal.close(remove=everything_written)
            if everything_written and self._sink is not None:
                with contextlib.suppress(Exception):
                    await self._sink.forget(self.journal.instance)
            if self._sink is not None:
                self._sink.close()
                self._sink = None

    async def __aenter__(self) -> LedgerWriter:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    def record(self, row: LedgerRow) -> None:
        """Journal ``row`` and queue it for the database. Once this returns, the row survives
        the death of the process; raises :class:`~llmrelay.errors.ServiceUnavailable` if the
        journal could not be written (the caller must not send the response as complete)."""
        at = row[-1]
        self.append((*row[:-1], self.now() if at is None else _sqlite_time(at)))

    def append(self, record: Record) -> None:
        """:meth:`record` for a plain tuple of :data:`FIELDS`' values, ``created_at`` as
        :meth:`now` gives it: what the request path uses, with no conversion per row."""
        if not self.running:
            raise RuntimeError("the ledger writer is not running")
        try:
            self.journal.append(self._seq + 1, record)
        except OSError as exc:
            self.failed += 1
            log.error("ledger journal write failed for request %s: %s", record[0], exc)
            raise ServiceUnavailable(
                "The request could not be recorded (the server cannot write its journal); "
                "retry shortly."
            ) from exc
        self._seq += 1
        self._queue.append(record)
        self._wakeup.set()
        if len(self._queue) >= self.max_batch:
            self._full.set()

    async def flush(self) -> bool:
        """Wait until every row recorded before the call is committed (or dropped); False if
        that took longer than :data:`FLUSH_PATIENCE` seconds (the database is unreachable)."""
        if not self._queue or not self.running:
            return True
        waiter = _Waiter(self._seq, asyncio.get_running_loop().create_future())
        self._waiters.append(waiter)
        self._full.set()  # no need to wait for more rows
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(FLUSH_PATIENCE):
                await asyncio.shield(waiter.done)
        # Handled up to here (a stop also wakes the waiters, with rows left in the journal):
        return self._seq - len(self._queue) >= waiter.seq

    # -- the writer task ----------------------------------------------------------------------

    async def _run(self) -> None:
        while True:
            if time.monotonic() >= self._next_adoption:
                await self._adopt()
            if not self._queue:
                if self._closing:
                    return
                self._wakeup.clear()
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.adopt_every):
                        await self._wakeup.wait()
                continue
            await self._gather()
            batch = self._queue[: self.max_batch]
            last = self._seq - len(self._queue) + len(batch)
            try:
                await self._write(self.journal.instance, last, batch)
            except _Unreachable as exc:
                if exc.done:  # the rows written one by one before the database went away
                    self._dequeue(exc.done, last - len(batch) + exc.done)
                if self._closing:
                    return  # the journal keeps the others
                await self._back_off()
                continue
            self._dequeue(len(batch), last)

    def _dequeue(self, count: int, last: int) -> None:
        """The first ``count`` queued rows, numbered up to ``last``, are handled."""
        del self._queue[:count]
        if len(self._queue) < self.max_batch and not self._closing and not self._waiters:
            self._full.clear()
        self._written(last)

    async def _gather(self) -> None:
        """Let more rows join the batch: up to ``max_delay``, or until ``max_batch`` wait."""
        if self.max_delay and len(self._queue) < self.max_batch and not self._closing:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.max_delay):
                    await self._full.wait()

    async def _back_off(self) -> None:
        self._backoff = min(MAX_BACKOFF, max(0.05, self._backoff * 2))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._backoff):
                while not self._closing:
                    self._full.clear()
                    await self._full.wait()

    def _written(self, seq: int) -> None:
        self._backoff = 0.0
        self.journal.committed(seq)
        ready = [w for w in self._waiters if w.seq <= seq]
        if ready:
            self._waiters = [w for w in self._waiters if w.seq > seq]
            for waiter in ready:
                if not waiter.done.done():
                    waiter.done.set_result(None)

    def _release_waiters(self) -> None:
        for waiter in self._waiters:
            if not waiter.done.done():
                waiter.done.set_result(None)
        self._waiters = []

    async def _write(self, instance: str, last: int, batch: list[Record]) -> None:
        """Commit ``batch`` (numbered up to ``last``), or raise :class:`_Unreachable`."""
        assert self._sink is not None
        try:
            await self._sink.write(instance, last, batch)
        except Exception as exc:
            if not is_bad_row(exc):
                log.warning("ledger batch of %d rows not written (%s); will retry", len(batch), exc)
                raise _Unreachable from exc
            if len(batch) > 1:
                log.warning(
                    "ledger batch of %d rows refused (%s); writing them one by one", len(batch), exc
                )
            first = last - len(batch) + 1
            for done, row in enumerate(batch):
                try:
                    await self._write_one(instance, first + done, row)
                except _Unreachable as cut:
                    raise _Unreachable(done) from cut
            return
        self.transactions += 1
        self.rows += len(batch)

    async def _write_one(self, instance: str, seq: int, row: Record) -> None:
        assert self._sink is not None
        try:
            await self._sink.write(instance, seq, [row])
        except Exception as exc:
            if not is_bad_row(exc):
                raise _Unreachable from exc
            self.failed += 1
            log.error("ledger row for request %s dropped: the database refused it: %s", row[0], exc)
        else:
            self.transactions += 1
            self.rows += 1

    # -- journals of dead processes -----------------------------------------------------------

    async def _adopt(self) -> None:
        self._next_adoption = time.monotonic() + self.adopt_every
        for orphan in orphans(self.journal.directory, own=self.journal.instance):
            try:
                await self._adopt_one(orphan)
            except Exception as exc:
                orphan.release()
                log.warning("journal %s not adopted yet: %s", orphan.instance, exc)

    async def _adopt_one(self, orphan: Orphan) -> None:
        assert self._sink is not None
        after = await self._sink.mark(orphan.instance)
        records = orphan.rows(after)  # read lazily, a batch at a time: a journal may be large
        written = 0
        while numbered := await asyncio.to_thread(
            lambda: list(itertools.islice(records, self.max_batch))
        ):
            try:
                await self._write(orphan.instance, numbered[-1][0], [row for _, row in numbered])
            except _Unreachable as exc:
                raise RuntimeError("the database is unreachable") from exc
            written += len(numbered)
        orphan.remove()
        await self._sink.forget(orphan.instance)
        if written:
            log.warning("adopted the journal of a process that died: %d rows written", written)
