"""Users, keys with limits, prices and usage in the store, on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, func, insert, select

from llmrelay.accounting.money import (
    MAX_MONEY,
    MoneyError,
    format_usd,
    parse_price,
    parse_usd,
    price_text,
    usd_text,
)
from llmrelay.settings import async_database_url
from llmrelay.store.db import Database, migrate, sync_url
from llmrelay.store.keys import KeyError_, KeyNotFound, KeyStore
from llmrelay.store.prices import PriceNotFound, PriceRecord, PriceStore
from llmrelay.store.tables import Base, Ledger, UsageDaily
from llmrelay.store.usage import UsageRow, UsageStore
from llmrelay.store.users import UserError, UserNotFound, UserStore
from tests.databases import BACKENDS, fresh_database, migrated_database, run_on

T = TypeVar("T")
USD = 10**12


@pytest.fixture(params=BACKENDS)
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    with migrated_database(request.param, tmp_path) as resolved:
        yield resolved


run = run_on


def _alembic(url: str, action: Callable[[Config], None]) -> None:
    from llmrelay.store import db as db_module

    engine = create_engine(sync_url(url))
    config = Config()
    config.set_main_option("script_location", str(db_module._MIGRATIONS))
    try:
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            action(config)
    finally:
        engine.dispose()


def test_migrations_match_the_models_and_go_both_ways(url: str) -> None:
    migrate(url)  # a second run changes nothing
    engine = create_engine(sync_url(url))
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()
    _alembic(url, lambda config: command.downgrade(config, "0002"))
    _alembic(url, lambda config: command.upgrade(config, "head"))
    run(url, lambda db: UserStore(db).create("after-roundtrip", balance=USD))


def test_instances_starting_together_migrate_one_after_the_other(tmp_path: Path) -> None:
    code = "import sys; from llmrelay.store.db import migrate; migrate(sys.argv[1])"
    with fresh_database("postgresql", tmp_path) as raw:
        url = async_database_url(raw)
        starts = [
            subprocess.Popen([sys.executable, "-c", code, url], stderr=subprocess.PIPE, text=True)
            for _ in range(4)
        ]
        for process in starts:
            _, errors = process.communicate(timeout=60)
            assert process.returncode == 0, errors
        run(url, lambda db: UserStore(db).create("after-race"))


def test_users(url: str) -> None:
    async def work(db: Database) -> None:
        users = UserStore(db)
        await users.create("ann", balance=10 * USD)
        await users.create("root", role="admin")
        with pytest.raises(UserError, match="already exists"):
            await users.create("ann")
        with pytest.raises(UserError, match="role"):
            await users.create("eve", role="owner")
        await KeyStore(db).create("ann-1", user="ann")
        ann = await users.get("ann")
        assert (ann.role, ann.balance_pusd, ann.spent_pusd, ann.keys) == ("user", 10 * USD, 0, 1)
        assert (await users.get("root")).balance_pusd is None
        await users.set_balance("ann", 150_000_000)
        assert (await users.get("ann")).balance_pusd == 150_000_000
        await users.set_balance("ann", None)
        assert (await users.get("ann")).balance_pusd is None
        await users.disable("ann")
        await users.disable("ann")  # twice is fine
        assert not (await users.get("ann")).enabled
        await users.enable("ann")
        assert (await users.get("ann")).enabled
        assert [u.name for u in await users.list()] == ["ann", "root"]
        with pytest.raises(UserNotFound):
            await users.set_balance("nobody", 1)
        with pytest.raises(UserNotFound):
            await users.disable("nobody")

    run(url, work)


def test_keys_carry_their_limits(url: str) -> None:
    async def work(db: Database) -> None:
        keys = KeyStore(db)
        expires = datetime(2099, 1, 1, tzinfo=UTC)
        secret = await keys.create(
            "limited",
            user="bea",
            models=["m1", "m2"],
            credit_pusd=5 * USD,
            rpm=60,
            tpm=10_000,
            expires_at=expires,
        )
        record = await keys.lookup(secret)
        assert record is not None and record.usable()
        assert (record.user, record.models, record.credit_pusd, record.spent_pusd) == (
            "bea",
            ("m1", "m2"),
            5 * USD,
            0,
        )
        assert (record.rpm, record.tpm, record.credit_left()) == (60, 10_000, 5 * USD)
        assert record.expires_at is not None and record.expires_at.replace(tzinfo=UTC) == expires
        assert record.user_id == (await UserStore(db).get("bea")).id

        new = await keys.reset("limited")
        assert await keys.lookup(secret) is None  # the old secret is dead at once
        again = await keys.lookup(new)
        assert again is not None and again.id == record.id
        assert (again.models, again.credit_pusd, again.rpm, again.tpm) == (
            ("m1", "m2"),
            5 * USD,
            60,
            10_000,
        )
        await keys.update("limited", credit_pusd=None, rpm=5, models=None)
        changed = await keys.get("limited")
        assert (changed.credit_pusd, changed.rpm, changed.tpm, changed.models) == (
            None,
            5,
            10_000,
            None,
        )
        await keys.revoke("limited")
        revoked = await keys.lookup(new)
        assert revoked is not None and revoked.status() == "revoked"
        assert [k.name for k in await keys.list(user="bea")] == ["limited"]
        assert await keys.list(user="nobody") == []

    run(url, work)


def test_key_errors(url: str) -> None:
    async def work(db: Database) -> None:
        keys = KeyStore(db)
        await keys.create("dup")
        with pytest.raises(KeyError_, match="already exists"):
            await keys.create("dup")
        with pytest.raises(KeyError_, match="negative"):
            await keys.create("neg", credit_pusd=-1)
        with pytest.raises(KeyNotFound):
            await keys.reset("nobody")
        with pytest.raises(KeyNotFound):
            await keys.update("nobody", rpm=1)
        with pytest.raises(KeyError_, match="cannot change"):
            await keys.update("dup", secret_hash="x")

    run(url, work)


def test_disabled_user_and_expired_key_do_not_authenticate(url: str) -> None:
    async def work(db: Database) -> None:
        keys, users = KeyStore(db), UserStore(db)
        secret = await keys.create("cy-1", user="cy")
        await users.disable("cy")
        assert await keys.lookup(secret) is None
        assert (await keys.get("cy-1")).status() == "disabled"
        await users.enable("cy")
        assert await keys.lookup(secret) is not None
        old = await keys.create("cy-old", user="cy", expires_at=datetime(2020, 1, 1, tzinfo=UTC))
        record = await keys.lookup(old)
        assert record is not None and record.status() == "expired" and not record.usable()

    run(url, work)


def test_prices(url: str) -> None:
    async def work(db: Database) -> None:
        prices = PriceStore(db)
        # $2.50 / $10.00 per million tokens: 2.5 and 10 micro-USD, 2,500,000 and 10,000,000
        # picodollars per token.
        gpt = await prices.set(PriceRecord("openai/gpt-4o", 2_500_000, 10_000_000))
        assert (gpt.cached_input, gpt.reasoning, gpt.per_search_pusd) == (
            2_500_000,
            10_000_000,
            0,
        )
        await prices.set(
            PriceRecord(
                "openai/gpt-4o",
                2_500_000,
                10_000_000,
                cached_input_pusd=1_250_000,
                reasoning_pusd=20_000_000,
                per_search_pusd=10**10,
            )
        )
        price = await prices.get("openai/gpt-4o")
        assert (price.cached_input, price.reasoning, price.per_search_pusd) == (
            1_250_000,
            20_000_000,
            10**10,
        )
        await prices.set(PriceRecord("cheap", 75_000, 300_000))
        assert [p.model for p in await prices.list()] == ["cheap", "openai/gpt-4o"]
        await prices.delete("cheap")
        assert await prices.find("cheap") is None
        with pytest.raises(PriceNotFound):
            await prices.delete("cheap")

    run(url, work)


NOW = datetime.now(UTC).replace(hour=12, minute=0, second=0, microsecond=0)
TODAY = NOW.date()


def _ledger(
    i: int, key_id: int | None, user_id: int | None, days_ago: int, **extra: Any
) -> dict[str, Any]:
    return {
        "request_id": f"req_{i}",
        "created_at": NOW - timedelta(days=days_ago, seconds=i % 60),
        "key_id": key_id,
        "user_id": user_id,
        "model": extra.pop("model", "m-a"),
        "channel": "local",
        "prompt_tokens": 10,
        "cached_tokens": 2,
        "completion_tokens": 5,
        "reasoning_tokens": 1,
        "search_calls": 0,
        "estimated": False,
        "stream": i % 2 == 0,
        "cost_pusd": 1_000_003,
        "latency_ms": 20,
        "ttft_ms": 5,
        "status": 200,
        **extra,
    }


async def _fill(db: Database) -> tuple[int, int]:
    keys = KeyStore(db)
    await keys.create("k-one", user="u-one")
    await keys.create("k-two", user="u-two")
    one, two = await keys.get("k-one"), await keys.get("k-two")
    rows = [
        *(_ledger(i, one.id, one.user_id, i % 3) for i in range(30)),
        *(_ledger(100 + i, two.id, two.user_id, 0, model="m-b") for i in range(10)),
        _ledger(200, two.id, two.user_id, 1, model="m-b", status=500, error_type="upstream_error"),
        _ledger(201, None, None, 2, model="m-a", status=401, cost_pusd=0),
    ]
    async with db.engine.begin() as conn:
        await conn.execute(insert(Ledger), rows)
    return one.id, two.id


def _summary(rows: list[UsageRow]) -> dict[str, tuple[int, int, int, int]]:
    return {r.group: (r.requests, r.errors, r.prompt_tokens, r.cost_pusd) for r in rows}


async def _reports(db: Database) -> dict[str, Any]:
    usage = UsageStore(db)
    return {by: _summary(await usage.usage(by)) for by in ("key", "user", "model", "day")}


def test_usage_reports_rollup_and_prune(url: str) -> None:
    async def work(db: Database) -> None:
        await _fill(db)
        usage = UsageStore(db)
        before = await _reports(db)
        cost = 1_000_003
        assert before["key"] == {
            "k-one": (30, 0, 300, 30 * cost),
            "k-two": (11, 1, 110, 11 * cost),
            "(no key)": (1, 1, 10, 0),
        }
        assert before["user"]["u-two"] == (11, 1, 110, 11 * cost)
        assert before["user"]["(no user)"] == (1, 1, 10, 0)
        assert before["model"] == {"m-a": (31, 1, 310, 30 * cost), "m-b": (11, 1, 110, 11 * cost)}
        assert before["day"] == {
            (TODAY - timedelta(days=2)).isoformat(): (11, 1, 110, 10 * cost),
            (TODAY - timedelta(days=1)).isoformat(): (11, 1, 110, 11 * cost),
            TODAY.isoformat(): (20, 0, 200, 20 * cost),
        }
        one, two = await KeyStore(db).get("k-one"), await KeyStore(db).get("k-two")
        mine = await usage.usage("model", key_id=one.id)
        assert _summary(mine) == {"m-a": (30, 0, 300, 30 * cost)}
        theirs = await usage.usage("model", user_id=two.user_id)
        assert _summary(theirs) == {"m-b": (11, 1, 110, 11 * cost)}
        since = await usage.usage("model", since=TODAY - timedelta(days=1), until=TODAY)
        assert _summary(since)["m-a"] == (20, 0, 200, 20 * cost)

        assert await usage.rollup(NOW - timedelta(hours=12), batch=7) == 22
        assert await usage.rollup(NOW - timedelta(hours=12), batch=7) == 0  # idempotent
        assert await _reports(db) == before
        assert await usage.prune(1, now=NOW + timedelta(hours=1)) == 22
        assert await usage.prune(1, now=NOW + timedelta(hours=1)) == 0
        assert await _reports(db) == before  # pruned rows live on in usage_daily
        assert _summary(await usage.usage("model", user_id=two.user_id)) == _summary(theirs)
        async with db.engine.connect() as conn:
            left = await conn.scalar(select(func.count()).select_from(Ledger))
            days = await conn.scalar(select(func.count()).select_from(UsageDaily))
        assert left == 20
        assert days == 4  # (day-2, k-one, m-a), (day-2, no key, m-a), (day-1, ...) x2
        since_yesterday = await usage.usage("day", since=TODAY - timedelta(days=1))
        assert [r.group for r in since_yesterday] == [
            (TODAY - timedelta(days=1)).isoformat(),
            TODAY.isoformat(),
        ]

    run(url, work)


def test_concurrent_rollups_count_each_row_once(url: str) -> None:
    """Two roll-ups at once, each on its own engine (as two processes would be)."""
    rows = 1200

    async def fill(db: Database) -> None:
        await KeyStore(db).create("busy", user="busy")
        key = await KeyStore(db).get("busy")
        async with db.engine.begin() as conn:
            await conn.execute(
                insert(Ledger),
                [_ledger(i, key.id, key.user_id, 1 + i % 2) for i in range(rows)],
            )

    run(url, fill)

    async def race(_: Database) -> list[int]:
        first, second = Database(url), Database(url)
        try:
            return await asyncio.gather(
                UsageStore(first).rollup(NOW, batch=50),
                UsageStore(second).rollup(NOW, batch=50),
            )
        finally:
            await first.close()
            await second.close()

    done = run(url, race)
    assert sum(done) == rows

    async def check(db: Database) -> None:
        async with db.engine.connect() as conn:
            total = await conn.scalar(select(func.sum(UsageDaily.requests)))
        assert total == rows
        report = await UsageStore(db).usage("key")
        assert _summary(report) == {"busy": (rows, 0, rows * 10, rows * 1_000_003)}

    run(url, check)


def test_usage_rejects_unknown_grouping(url: str) -> None:
    with pytest.raises(ValueError, match="by must be"):
        run(url, lambda db: UsageStore(db).usage("channel"))  # type: ignore[arg-type]


def test_usage_of_an_empty_range(url: str) -> None:
    rows = run(
        url, lambda db: UsageStore(db).usage("day", since=date(2001, 1, 1), until=date(2001, 1, 2))
    )
    assert rows == []


# -- money -----------------------------------------------------------------------------------


def test_usd_is_exact() -> None:
    assert parse_usd("0.1") + parse_usd("0.2") == parse_usd("0.3") == 300_000_000_000
    assert parse_usd("$10.50") == parse_usd(10.5) == parse_usd("10.500000000000") == 10_500 * 10**9
    assert parse_usd("0.000000000001") == parse_usd("1e-12") == 1
    assert parse_usd(" 2 ") == parse_usd(2) == 2 * 10**12
    assert parse_usd("-1.5", negative=True) == parse_usd("-$1.5", negative=True) == -15 * 10**11
    assert parse_usd("1_000") == 1000 * 10**12


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("0.0000000000001", "more than 12 decimals"),
        ("-1", "negative"),
        ("abc", "not an amount"),
        ("", "not an amount"),
        ("nan", "not an amount"),
        ("inf", "not an amount"),
        ("1e400", "too large"),
        ("9300000", "too large"),
        (True, "not an amount"),
        (None, "not an amount"),
    ],
)
def test_usd_refusals(text: Any, message: str) -> None:
    with pytest.raises(MoneyError, match=message):
        parse_usd(text)


def test_prices_per_million_tokens_are_picodollars_per_token() -> None:
    assert parse_price("2.5") == 2_500_000
    assert parse_price("0.000001") == 1  # the smallest price: $1 per 1e12 tokens
    assert parse_price(0.075) == 75_000
    # A million tokens at the price costs the price, exactly.
    assert 1_000_000 * parse_price("0.15") == parse_usd("0.15")
    assert 123_457 * parse_price("3.000007") == parse_usd("0.370371864199")
    with pytest.raises(MoneyError, match="more than 6 decimals"):
        parse_price("0.0000001")
    with pytest.raises(MoneyError, match="negative"):
        parse_price("-1")


def test_format_usd() -> None:
    assert format_usd(150_000_000) == "$0.000150"
    assert format_usd(0) == "$0.00"
    assert format_usd(10_500_000_000_000) == "$10.50"
    assert format_usd(10**10) == "$0.01"
    assert format_usd(15 * 10**9) == "$0.015000"
    assert format_usd(1) == "$0.000000000001"
    assert format_usd(-(10**12)) == "-$1.00"
    assert usd_text(123_456_789) == "0.000123456789"
    assert price_text(2_500_000) == "2.50" and price_text(75_000) == "0.075000"
    for value in (1, 150_000_000, 10**12 + 7, MAX_MONEY):
        assert parse_usd(format_usd(value)) == value


# -- URLs --------------------------------------------------------------------------------------


def test_database_urls_as_users_write_them() -> None:
    assert async_database_url("postgresql://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_database_url("postgres://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_database_url("postgresql+asyncpg://u@h/db") == "postgresql+asyncpg://u@h/db"
    assert async_database_url("sqlite:////tmp/x.db") == "sqlite+aiosqlite:////tmp/x.db"
    assert sync_url("postgresql+asyncpg://u@h/db") == "postgresql+psycopg://u@h/db"


def test_cli_takes_the_database_url_by_flag_and_environment(tmp_path: Path) -> None:
    with fresh_database("postgresql", tmp_path) as url:
        cli = [sys.executable, "-m", "llmrelay"]
        env = {k: v for k, v in os.environ.items() if not k.startswith("LLMRELAY_")}
        made = subprocess.run(
            [*cli, "users", "create", "pg-user", "--balance", "1", "--database-url", url],
            capture_output=True, text=True, env=env, check=False,
        )  # fmt: skip
        assert made.returncode == 0, made.stderr
        listed = subprocess.run(
            [*cli, "users", "list"],
            capture_output=True, text=True, check=False,
            env={**env, "LLMRELAY_DATABASE_URL": url},
        )  # fmt: skip
        assert listed.returncode == 0, listed.stderr
        assert "pg-user" in listed.stdout and "$1.00" in listed.stdout
