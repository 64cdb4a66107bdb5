"""The journaling, batch-committing ledger writer on real SQLite and real PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import queue
import signal
import sqlite3
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import pytest
from sqlalchemy import func, select, text

from llmrelay.accounting.journal import records
from llmrelay.accounting.ledger import LedgerRow, LedgerWriter
from llmrelay.accounting.ledger_sql import SQLITE_ROWS_PER_INSERT, SqliteSink, sqlite_chunks
from llmrelay.store.db import Database
from llmrelay.store.keys import KeyStore
from llmrelay.store.tables import ApiKey, Ledger, User
from llmrelay.store.users import UserStore
from tests.databases import BACKENDS, migrated_database, run_on

T = TypeVar("T")
USD = 10**12
CHILD = Path(__file__).with_name("ledger_crash_child.py")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as resolved:
        yield resolved


@pytest.fixture
def journal(tmp_path: Path) -> Path:
    return tmp_path / "journal"


run = run_on


async def _accounts(db: Database) -> dict[str, int]:
    """ann (1000 USD, key k-ann) and bob (unlimited, key k-bob)."""
    users, keys = UserStore(db), KeyStore(db)
    ids = {"ann": await users.create("ann", balance=1000 * USD), "bob": await users.create("bob")}
    for name in ("ann", "bob"):
        await keys.create(f"k-{name}", user=name)
        ids[f"k-{name}"] = (await keys.get(f"k-{name}")).id
    return ids


def _row(request_id: str, ids: dict[str, int], who: str = "ann", cost: int = 5) -> LedgerRow:
    return LedgerRow(
        request_id=request_id,
        model="m",
        status=200,
        key_id=ids[f"k-{who}"],
        user_id=ids[who],
        cost_pusd=cost,
    )


async def _state(db: Database) -> dict[str, Any]:
    async with db.engine.connect() as conn:
        users = (await conn.execute(select(User.name, User.balance_pusd, User.spent_pusd))).all()
        keys = (await conn.execute(select(ApiKey.name, ApiKey.spent_pusd))).all()
        ids = (await conn.execute(select(Ledger.request_id))).scalars().all()
    return {
        "users": {name: (balance, spent) for name, balance, spent in users},
        "keys": dict(keys),  # type: ignore[arg-type]
        "ids": list(ids),
    }


def _count_commits(db: Database, writer: LedgerWriter) -> list[int]:
    """COMMIT statements run on the SQLite connection the writer writes with."""
    commits: list[int] = []
    sink = writer._sink
    if isinstance(sink, SqliteSink):
        sink.connection.set_trace_callback(
            lambda sql: commits.append(1) if sql.strip().upper() == "COMMIT" else None
        )
    return commits


async def _transactions(db: Database, commits: list[int]) -> int:
    """How many transactions wrote the ledger rows: SQLite's counted commits, or on
    PostgreSQL the distinct inserting transaction ids (xmin) of the rows themselves."""
    if db.engine.dialect.name != "postgresql":
        return len(commits)
    async with db.engine.connect() as conn:
        found = await conn.execute(text("SELECT count(DISTINCT xmin::text) FROM ledger"))
        return int(found.scalar_one())


def test_rows_and_balances_are_committed(url: str, journal: Path) -> None:
    async def work(db: Database) -> dict[str, Any]:
        ids = await _accounts(db)
        async with LedgerWriter(db, journal) as writer:
            writer.record(_row("r1", ids, cost=5))
            writer.record(_row("r2", ids, cost=7))
            writer.record(_row("r3", ids, "bob", cost=11))
            failed = LedgerRow(
                request_id="r4",
                model="m",
                status=502,
                error_type="upstream_error",
                channel="up",
                stream=True,
                estimated=True,
                prompt_tokens=3,
                cached_tokens=1,
                completion_tokens=2,
                reasoning_tokens=1,
                search_calls=1,
                latency_ms=40,
                ttft_ms=12,
            )
            writer.record(failed)
            assert await writer.flush()  # in the database now, before the writer stops
            state = await _state(db)
        async with db.engine.connect() as conn:
            stored = (await conn.execute(select(Ledger).where(Ledger.request_id == "r4"))).one()
        assert (stored.status, stored.error_type, stored.channel, stored.key_id) == (
            502,
            "upstream_error",
            "up",
            None,
        )
        assert (stored.stream, stored.estimated, stored.ttft_ms, stored.search_calls) == (
            True,
            True,
            12,
            1,
        )
        return state

    state = run(url, work)
    assert sorted(state["ids"]) == ["r1", "r2", "r3", "r4"]
    assert state["users"] == {"ann": (1000 * USD - 12, 12), "bob": (None, 11)}
    assert state["keys"] == {"k-ann": 12, "k-bob": 11}
    assert list(journal.iterdir()) == []  # a clean stop leaves no journal behind


def test_rows_set_their_keys_last_use(url: str, journal: Path) -> None:
    """A key's last use is its newest request's time, free requests included; a key that made
    no request keeps none."""
    early = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    late = datetime(2026, 5, 1, 12, 5, tzinfo=UTC)

    async def work(db: Database) -> dict[str, datetime | None]:
        ids = await _accounts(db)
        async with LedgerWriter(db, journal, max_delay=0.05) as writer:
            writer.record(_row("late", ids, cost=0)._replace(created_at=late))
            writer.record(_row("early", ids, cost=3)._replace(created_at=early))
        keys = KeyStore(db)
        return {name: (await keys.get(name)).last_used_at for name in ("k-ann", "k-bob")}

    used = run(url, work)
    assert used["k-bob"] is None
    found = used["k-ann"]
    assert found is not None
    # SQLite hands back naive UTC times.
    assert (found if found.tzinfo else found.replace(tzinfo=UTC)) == late


def test_rows_recorded_together_share_transactions(url: str, journal: Path) -> None:
    async def work(db: Database) -> tuple[int, LedgerWriter, dict[str, Any]]:
        ids = await _accounts(db)
        writer = LedgerWriter(db, journal, max_delay=0.005)
        async with writer:
            commits = _count_commits(db, writer)
            for i in range(400):
                writer.record(_row(f"r{i}", ids, ("ann", "bob")[i % 2], cost=i))
                if i % 50 == 0:
                    await asyncio.sleep(0.001)
        return await _transactions(db, commits), writer, await _state(db)

    transactions, writer, state = run(url, work)
    assert len(state["ids"]) == 400 and writer.rows == 400
    assert 2 <= writer.transactions == transactions <= 20
    ann = sum(range(0, 400, 2))
    assert state["users"]["ann"] == (1000 * USD - ann, ann)
    assert state["keys"] == {"k-ann": ann, "k-bob": sum(range(1, 400, 2))}


def test_batches_keep_to_their_size_and_form_without_a_delay(url: str, journal: Path) -> None:
    async def work(db: Database) -> tuple[int, int]:
        ids = await _accounts(db)
        async with LedgerWriter(db, journal, max_batch=10, max_delay=0.5) as small:
            for i in range(100):
                small.record(_row(f"a{i}", ids))
            assert await small.flush()
            small_count = small.transactions
        async with LedgerWriter(db, journal, max_delay=0) as eager:
            for i in range(100):
                eager.record(_row(f"b{i}", ids))
            await asyncio.sleep(0.05)
            eager.record(_row("alone", ids))
            assert await eager.flush()
        return small_count, eager.transactions

    small, eager = run(url, work)
    assert small == 10  # full batches go at once, without waiting out the 0.5 s
    assert eager <= 5


_BATCH_SIZES = (*range(1, 40), 255, 256, 257, 300, 511, 600)


def test_sqlite_batches_of_any_size_use_a_few_prepared_insert_statements(tmp_path: Path) -> None:
    """Batches of every size from 1 to 600 rows are written whole and in order, by INSERTs of
    nine sizes at most: each is parsed once, then found in sqlite3's statement cache."""

    async def work(db: Database) -> tuple[set[int], list[str]]:
        ids = await _accounts(db)
        inserts: set[int] = set()  # the row counts of the INSERTs (the trace shows values)
        writer = LedgerWriter(db, tmp_path / "journal", max_batch=600, max_delay=0)
        async with writer:
            sink = writer._sink
            assert isinstance(sink, SqliteSink)
            sink.connection.set_trace_callback(
                lambda sql: (
                    inserts.add(sql.count("), ('") + 1)
                    if sql.startswith("INSERT INTO ledger ")
                    else None
                )
            )
            for size in _BATCH_SIZES:
                rows = [_row(f"{size:03d}-{i:03d}", ids) for i in range(size)]
                for row in rows:
                    writer.record(row)
                assert await writer.flush()
        return inserts, (await _state(db))["ids"]

    with migrated_database("sqlite", tmp_path) as url:
        inserts, written = run(url, work)
    assert written == [f"{size:03d}-{i:03d}" for size in _BATCH_SIZES for i in range(size)]
    assert inserts == {1, 2, 4, 8, 16, 32, 64, 128, 256}


def test_the_sqlite_writer_binds_bools_and_none_as_before_without_adapting_them(
    tmp_path: Path,
) -> None:
    """Adapters for bool and None are registered (sqlite3 finds them before its costly
    ``__adapt__``/``__conform__`` lookups), and they bind what sqlite3 bound without them."""
    connection = Database(f"sqlite+aiosqlite:///{tmp_path}/plain.db").sqlite_writer()
    assert connection is not None
    try:
        for kind in (bool, type(None)):
            assert (kind, sqlite3.PrepareProtocol) in sqlite3.adapters
        found = connection.execute(
            "SELECT ?, typeof(?), ?, ?, typeof(?)", (True, True, False, None, None)
        ).fetchone()
    finally:
        connection.close()
    assert found == (1, "integer", 0, None, "null")


def test_sqlite_chunks_are_powers_of_two_largest_first() -> None:
    for count in range(0, 1100):
        rows = [(i,) for i in range(count)]
        chunks = list(sqlite_chunks(rows))
        assert [row for chunk in chunks for row in chunk] == rows
        lengths = [len(chunk) for chunk in chunks]
        assert lengths == sorted(lengths, reverse=True)
        assert all(n <= SQLITE_ROWS_PER_INSERT and n & (n - 1) == 0 for n in lengths)
        smaller = [n for n in lengths if n < SQLITE_ROWS_PER_INSERT]
        assert len(set(smaller)) == len(smaller)  # the binary digits of the remainder


def test_a_row_the_database_refuses_is_dropped_alone(url: str, journal: Path) -> None:
    async def work(db: Database) -> dict[str, Any]:
        ids = await _accounts(db)
        # A row the database refuses for what it holds (a NULL model).
        bad = LedgerRow(request_id="bad", model=None, status=200, cost_pusd=1)
        async with LedgerWriter(db, journal, max_delay=0.01) as writer:
            rows = [_row(f"r{i}", ids) for i in range(10)]
            rows.insert(5, bad)
            for row in rows:
                writer.record(row)
            assert await writer.flush()
            assert writer.counts() == {
                "rows": 10,
                "transactions": 10,
                "failed_rows": 1,
                "queued_rows": 0,
            }
        return await _state(db)

    state = run(url, work)
    assert sorted(state["ids"]) == sorted(f"r{i}" for i in range(10))
    assert state["users"]["ann"] == (1000 * USD - 50, 50)


class _GoesAway:
    """The real sink, but the database becomes unreachable for one call, the ``fail_on``-th:
    the moment cannot be hit otherwise."""

    def __init__(self, sink: Any, fail_on: int) -> None:
        self.sink, self.fail_on, self.calls = sink, fail_on, 0

    async def write(self, instance: str, last: int, rows: Any) -> None:
        self.calls += 1
        if self.calls == self.fail_on:
            raise sqlite3.OperationalError("database is locked")
        await self.sink.write(instance, last, rows)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.sink, name)


def test_rows_written_one_by_one_before_the_database_went_away_are_not_written_twice(
    tmp_path: Path,
) -> None:
    with migrated_database("sqlite", tmp_path) as url:

        async def work() -> tuple[dict[str, int], dict[str, Any]]:
            db = Database(url)
            ids = await _accounts(db)
            # A row the database refuses for what it holds (a NULL model).
            bad = LedgerRow(request_id="bad", model=None, status=200, cost_pusd=1)
            rows = [_row("r0", ids), _row("r1", ids), bad, _row("r3", ids), _row("r4", ids)]
            async with LedgerWriter(db, tmp_path / "journal", max_delay=0.01) as writer:
                # The batch is refused (the bad row), r0, r1 and bad go one by one, then the
                # database is gone for r3: r0 and r1 must not be written again with r3 and r4.
                writer._sink = _GoesAway(writer._sink, fail_on=5)
                for row in rows:
                    writer.record(row)
                assert await writer.flush()
                counts = writer.counts()
            state = await _state(db)
            await db.close()
            return counts, state

        counts, state = asyncio.run(work())
    assert sorted(state["ids"]) == ["r0", "r1", "r3", "r4"]
    assert counts["failed_rows"] == 1 and counts["rows"] == 4
    assert state["users"]["ann"] == (1000 * USD - 20, 20)


def test_stop_writes_what_is_queued(url: str, journal: Path) -> None:
    async def work(db: Database) -> dict[str, Any]:
        ids = await _accounts(db)
        writer = LedgerWriter(db, journal, max_delay=5)
        await writer.start()
        for i in range(5):
            writer.record(_row(f"queued{i}", ids))
        await writer.stop()  # does not wait out the 5 s
        with pytest.raises(RuntimeError):
            writer.record(_row("late", ids))
        return await _state(db)

    state = run(url, work)
    assert sorted(state["ids"]) == [f"queued{i}" for i in range(5)]
    assert state["keys"]["k-ann"] == 25


def test_rows_wait_in_the_journal_while_the_database_is_locked(tmp_path: Path) -> None:
    """SQLite held by another writer: the rows stay queued and journaled, nothing is lost, and
    they are written once the database is free again."""
    with migrated_database("sqlite", tmp_path) as url:

        async def work(db: Database) -> tuple[dict[str, int], dict[str, int], dict[str, Any]]:
            ids = await _accounts(db)
            path = url.split(":///", 1)[1]
            blocker = sqlite3.connect(path, isolation_level=None)
            async with LedgerWriter(db, tmp_path / "journal", max_delay=0) as writer:
                assert isinstance(writer._sink, SqliteSink)
                writer._sink.connection.execute("PRAGMA busy_timeout=200")
                blocker.execute("BEGIN EXCLUSIVE")
                for i in range(20):
                    writer.record(_row(f"r{i}", ids))
                await asyncio.sleep(0.6)  # a few tries, each refused
                while_locked = writer.counts()
                segments = (tmp_path / "journal").glob("*.seg")
                journaled = [seq for path in segments for seq, _ in records(path)]
                assert journaled == list(range(20))
                blocker.execute("ROLLBACK")
                assert await writer.flush()
                after = writer.counts()
            blocker.close()
            return while_locked, after, await _state(db)

        while_locked, after, state = run(url, work)
    assert while_locked["queued_rows"] == 20 and while_locked["rows"] == 0
    assert after == {"rows": 20, "transactions": 1, "failed_rows": 0, "queued_rows": 0}
    assert state["users"]["ann"] == (1000 * USD - 100, 100)


def _lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.strip())
    into.put(None)


def _kill_child_mid_load(url: str, journal: Path, ids: dict[str, int]) -> list[str]:
    """Run the crash child until well into its load, kill -9 it; the ids it printed."""
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, str(journal), str(ids["k-ann"]), str(ids["ann"]), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(child.stdout, lines), daemon=True).start()
    printed: list[str] = []
    try:
        assert lines.get(timeout=60) == "ready"
        while len(printed) < 3000:  # well into the load, at no particular point
            line = lines.get(timeout=60)
            assert line is not None, "the child stopped early"
            printed.append(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    while (line := lines.get(timeout=30)) is not None:
        printed.append(line)  # printed before it died
    return printed


async def _stored(db: Database) -> tuple[list[str], dict[str, Any]]:
    async with db.engine.connect() as conn:
        found = (await conn.execute(select(Ledger.request_id))).scalars().all()
        total = (await conn.execute(select(func.sum(Ledger.cost_pusd)))).scalar_one()
    return list(found), {"total": total, **await _state(db)}


def _check_after_crash(printed: list[str], found: list[str], state: dict[str, Any]) -> None:
    assert len(found) == len(set(found)), "a row was written twice"
    assert set(printed) <= set(found)
    # Each batch moved its rows' cost from the balance in the same transaction.
    assert state["total"] == 3 * len(found)
    assert state["users"]["ann"] == (1000 * USD - state["total"], state["total"])
    assert state["keys"]["k-ann"] == state["total"]


def test_a_recorded_row_survives_kill_9_and_the_next_start_writes_it(
    url: str, journal: Path
) -> None:
    ids = run(url, _accounts)
    printed = _kill_child_mid_load(url, journal, ids)
    found_before, _ = run(url, _stored)
    assert len(found_before) < len(printed), "the kill came after every row was committed"

    async def restart(db: Database) -> tuple[list[str], dict[str, Any]]:
        async with LedgerWriter(db, journal, max_batch=50):  # adopted 50 rows at a time
            return await _stored(db)  # the rows of the dead process's journal are in

    found, state = run(url, restart)
    _check_after_crash(printed, found, state)
    assert list(journal.iterdir()) == []  # the dead journal was adopted and deleted


def test_a_running_writer_adopts_the_journal_of_a_process_that_died(
    url: str, journal: Path
) -> None:
    """Two processes share the journal directory; one is killed, the other writes its rows."""
    ids = run(url, _accounts)

    async def survivor(db: Database) -> tuple[list[str], list[str], dict[str, Any]]:
        async with LedgerWriter(db, journal, adopt_every=0.2):
            printed = await asyncio.to_thread(_kill_child_mid_load, url, journal, ids)
            for _ in range(100):
                found, state = await _stored(db)
                if set(printed) <= set(found):
                    break
                await asyncio.sleep(0.1)
            return printed, found, state

    printed, found, state = run(url, survivor)
    _check_after_crash(printed, found, state)
    assert list(journal.iterdir()) == []
