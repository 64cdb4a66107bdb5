"""The group-committing ledger writer on real SQLite and real PostgreSQL."""

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
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import pytest
from sqlalchemy import func, select, text

from llmrelay.accounting.ledger import LedgerRow, LedgerWriter
from llmrelay.store.db import Database
from llmrelay.store.keys import KeyStore
from llmrelay.store.tables import ApiKey, Ledger, User
from llmrelay.store.users import UserStore
from tests.databases import BACKENDS, migrated_database, run_on

# What a broken row raises: the drivers' own errors (sqlite3's; asyncpg's from COPY).
INTEGRITY = (sqlite3.IntegrityError, asyncpg.IntegrityConstraintViolationError)

T = TypeVar("T")
USD = 10**12
CHILD = Path(__file__).with_name("ledger_crash_child.py")


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as resolved:
        yield resolved


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
    if writer._sqlite is not None:
        writer._sqlite.set_trace_callback(
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


def test_rows_and_balances_are_committed(url: str) -> None:
    async def work(db: Database) -> dict[str, Any]:
        ids = await _accounts(db)
        async with LedgerWriter(db) as writer:
            await writer.record(_row("r1", ids, cost=5))
            await writer.record(_row("r2", ids, cost=7))
            await writer.record(_row("r3", ids, "bob", cost=11))
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
            await writer.record(failed)
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
        return await _state(db)

    state = run(url, work)
    assert sorted(state["ids"]) == ["r1", "r2", "r3", "r4"]
    assert state["users"] == {"ann": (1000 * USD - 12, 12), "bob": (None, 11)}
    assert state["keys"] == {"k-ann": 12, "k-bob": 11}


def test_rows_set_their_keys_last_use(url: str) -> None:
    """A key's last use is its newest request's time, free requests included; a key that made
    no request keeps none."""
    early = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    late = datetime(2026, 5, 1, 12, 5, tzinfo=UTC)

    async def work(db: Database) -> dict[str, datetime | None]:
        ids = await _accounts(db)
        async with LedgerWriter(db, max_delay=0.05) as writer:
            rows = [_row("late", ids, cost=0), _row("early", ids, cost=3)]
            await asyncio.gather(
                writer.record(replace(rows[0], created_at=late)),
                writer.record(replace(rows[1], created_at=early)),
            )
        keys = KeyStore(db)
        return {name: (await keys.get(name)).last_used_at for name in ("k-ann", "k-bob")}

    used = run(url, work)
    assert used["k-bob"] is None
    found = used["k-ann"]
    assert found is not None
    # SQLite hands back naive UTC times.
    assert (found if found.tzinfo else found.replace(tzinfo=UTC)) == late


def test_concurrent_rows_share_transactions(url: str) -> None:
    async def work(db: Database) -> tuple[int, LedgerWriter, dict[str, Any]]:
        ids = await _accounts(db)
        writer = LedgerWriter(db, max_delay=0.005)
        async with writer:
            commits = _count_commits(db, writer)
            rows = [_row(f"r{i}", ids, ("ann", "bob")[i % 2], cost=i) for i in range(400)]
            await asyncio.gather(*(writer.record(row) for row in rows))
        return await _transactions(db, commits), writer, await _state(db)

    transactions, writer, state = run(url, work)
    assert len(state["ids"]) == 400 and writer.rows == 400
    assert 2 <= writer.transactions == transactions <= 20  # at most 256 rows a batch
    ann = sum(range(0, 400, 2))
    assert state["users"]["ann"] == (1000 * USD - ann, ann)
    assert state["keys"] == {"k-ann": ann, "k-bob": sum(range(1, 400, 2))}


def test_batches_keep_to_their_size_and_form_without_a_delay(url: str) -> None:
    async def work(db: Database) -> tuple[int, int]:
        ids = await _accounts(db)
        async with LedgerWriter(db, max_batch=10, max_delay=0.5) as small:
            await asyncio.gather(*(small.record(_row(f"a{i}", ids)) for i in range(100)))
        async with LedgerWriter(db, max_delay=0) as eager:
            await asyncio.gather(*(eager.record(_row(f"b{i}", ids)) for i in range(100)))
            await eager.record(_row("alone", ids))
        return small.transactions, eager.transactions

    small, eager = run(url, work)
    assert small == 10  # full batches go at once, without waiting out the 0.5 s
    assert eager <= 5


def test_a_failing_row_fails_only_its_own_caller(url: str) -> None:
    async def work(db: Database) -> tuple[list[Any], dict[str, Any]]:
        ids = await _accounts(db)
        bad = LedgerRow(request_id="bad", model="m", status=200, key_id=999_999, cost_pusd=1)
        async with LedgerWriter(db, max_delay=0.01) as writer:
            rows = [_row(f"r{i}", ids) for i in range(10)]
            rows.insert(5, bad)
            found = await asyncio.gather(
                *(writer.record(row) for row in rows), return_exceptions=True
            )
        return found, await _state(db)

    found, state = run(url, work)
    assert [isinstance(f, INTEGRITY) for f in found] == [False] * 5 + [True] + [False] * 5
    assert sorted(state["ids"]) == sorted(f"r{i}" for i in range(10))
    assert state["users"]["ann"] == (1000 * USD - 50, 50)


def test_stop_writes_what_is_queued_and_cancelled_callers_still_count(url: str) -> None:
    async def work(db: Database) -> dict[str, Any]:
        ids = await _accounts(db)
        writer = LedgerWriter(db, max_delay=0.05)
        await writer.start()
        for i in range(5):
            writer.submit(_row(f"queued{i}", ids))
        caller = asyncio.create_task(writer.record(_row("cancelled", ids)))
        await asyncio.sleep(0)
        caller.cancel()
        await writer.stop()
        with pytest.raises(RuntimeError):
            await writer.record(_row("late", ids))
        return await _state(db)

    state = run(url, work)
    assert sorted(state["ids"]) == ["cancelled"] + [f"queued{i}" for i in range(5)]
    assert state["keys"]["k-ann"] == 30


def _lines(stream: Any, into: queue.Queue[str | None]) -> None:
    for line in stream:
        into.put(line.strip())
    into.put(None)


def test_a_row_whose_record_returned_survives_kill_9(url: str) -> None:
    ids = run(url, _accounts)
    child = subprocess.Popen(
        [sys.executable, str(CHILD), url, str(ids["k-ann"]), str(ids["ann"]), "3"],
        stdout=subprocess.PIPE,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()
    threading.Thread(target=_lines, args=(child.stdout, lines), daemon=True).start()
    printed: list[str] = []
    try:
        assert lines.get(timeout=60) == "ready"
        while len(printed) < 1500:  # well into the load, at no particular point
            line = lines.get(timeout=60)
            assert line is not None, "the child stopped early"
            printed.append(line)
    finally:
        os.kill(child.pid, signal.SIGKILL)
        child.wait(timeout=30)
    while (line := lines.get(timeout=30)) is not None:
        printed.append(line)  # printed before it died

    async def stored(db: Database) -> tuple[set[str], dict[str, Any]]:
        async with db.engine.connect() as conn:
            found = (await conn.execute(select(Ledger.request_id))).scalars().all()
            total = (await conn.execute(select(func.sum(Ledger.cost_pusd)))).scalar_one()
        return set(found), {"total": total, **await _state(db)}

    found, state = run(url, stored)
    assert set(printed) <= found
    assert len(found) >= len(printed)
    # Each batch moved its rows' cost from the balance in the same transaction.
    assert state["total"] == 3 * len(found)
    assert state["users"]["ann"] == (1000 * USD - state["total"], state["total"])
    assert state["keys"]["k-ann"] == state["total"]
