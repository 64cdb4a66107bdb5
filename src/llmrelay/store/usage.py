"""Usage reports, daily roll-ups and ledger retention.

The ledger holds one row per request. :meth:`UsageStore.rollup` adds old rows to
``usage_daily`` (one row per UTC day, key and model) and marks them ``rolled_up`` in the same
transaction; :meth:`UsageStore.prune` deletes rolled-up rows past the retention period. A
report sums ``usage_daily`` and the ledger rows not rolled up yet in one statement, so it is
exact whenever it runs. Both jobs are idempotent, and two processes may run them at once on
PostgreSQL: each row is claimed by exactly one ``UPDATE … RETURNING`` (rows locked by the
other process are skipped), so it is counted once.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from datetime import UTC, date, datetime, time, timedelta
from typing import Any, Literal, get_args

from sqlalchemy import (
    BigInteger,
    ColumnElement,
    Date,
    Select,
    SQLColumnExpression,
    and_,
    case,
    cast,
    delete,
    false,
    func,
    literal,
    select,
    true,
    union_all,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from llmrelay.accounting.money import Money
from llmrelay.store.db import Database
from llmrelay.store.tables import ApiKey, Ledger, UsageDaily, User

By = Literal["key", "user", "model", "day"]
BY: tuple[By, ...] = get_args(By)
SUMS = (
    "requests",
    "errors",
    "prompt_tokens",
    "cached_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "search_calls",
    "cost_pusd",
)
_TOKENS = SUMS[2:7]
NO_KEY = 0  # usage_daily.key_id of ledger rows without a key
_BATCH = 5000


@dataclass(slots=True)
class UsageRow:
    group: str  # key name, user name, model or ISO day
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    cached_tokens: int = 0
    completion_tokens: int = 0
    reasoning_tokens: int = 0
    search_calls: int = 0
    cost_pusd: Money = 0

    def add(self, other: UsageRow) -> None:
        for name in SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))

    def to_dict(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}


def total(rows: Sequence[UsageRow], group: str = "total") -> UsageRow:
    result = UsageRow(group)
    for row in rows:
        result.add(row)
    return result


def day_start(day: date) -> datetime:
    return datetime.combine(day, time(), tzinfo=UTC)


def _utc_day(value: datetime) -> date:
    return (value.astimezone(UTC) if value.tzinfo else value).date()


@dataclass(frozen=True, slots=True)
class LedgerEntry:
    """One ledger row as a page shows it: key and user by name (None: none, or deleted)."""

    id: int
    request_id: str
    created_at: datetime  # UTC
    key: str | None
    user: str | None
    model: str
    channel: str | None
    status: int
    error_type: str | None
    stream: bool
    estimated: bool
    prompt_tokens: int
    cached_tokens: int
    completion_tokens: int
    reasoning_tokens: int
    search_calls: int
    latency_ms: int
    ttft_ms: int | None
    cost_pusd: Money

    @classmethod
    def of(cls, row: Any) -> LedgerEntry:
        values = {f.name: row[f.name] for f in fields(cls) if f.name not in ("key", "user")}
        created = values["created_at"]
        values["created_at"] = created if created.tzinfo else created.replace(tzinfo=UTC)
        return cls(key=row["key_name"], user=row["user_name"], **values)


def _as_date(value: Any) -> date:
    """A day from a report (SQLite may hand back the text it stored)."""
    return value if isinstance(value, date) else date.fromisoformat(str(value))


class UsageStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    @property
    def _postgres(self) -> bool:
        return self.db.engine.dialect.name == "postgresql"

    # -- reports ------------------------------------------------------------------------------

    def _ledger_day(self) -> ColumnElement[Any]:
        if self._postgres:
            return cast(func.timezone("UTC", Ledger.created_at), Date)
        return func.date(Ledger.created_at)

    def _group(self, by: By) -> tuple[SQLColumnExpression[Any], SQLColumnExpression[Any]]:
        """The grouping column in usage_daily and in the ledger."""
        if by == "key":
            return UsageDaily.key_id, func.coalesce(Ledger.key_id, literal(NO_KEY))
        if by == "user":
            return UsageDaily.user_id, Ledger.user_id
        if by == "model":
            return UsageDaily.model, Ledger.model
        return UsageDaily.day, self._ledger_day()

    def _report(
        self,
        by: By,
        since: date | None,
        until: date | None,
        key_id: int | None,
        user_id: int | None,
    ) -> Select[Any]:
        return self._sums([self._group(by)], since, until, key_id, user_id)

    def _sums(
        self,
        groups: Sequence[tuple[SQLColumnExpression[Any], SQLColumnExpression[Any]]],
        since: date | None,
        until: date | None,
        key_id: int | None,
        user_id: int | None,
    ) -> Select[Any]:
        """The sums per group (pairs of usage_daily and ledger columns): the rolled-up days
        plus the ledger rows not rolled up yet, so nothing is missed or counted twice."""
        names = [f"g{i}" for i in range(len(groups))]
        labelled: list[Any] = [d.label(n) for n, (d, _) in zip(names, groups, strict=True)]
        daily = select(*labelled, *(getattr(UsageDaily, n) for n in SUMS))
        labelled = [g.label(n) for n, (_, g) in zip(names, groups, strict=True)]
        ledger = select(
            *labelled,
            func.count().label("requests"),
            func.sum(case((Ledger.status >= 400, 1), else_=0)).label("errors"),
            *(func.sum(getattr(Ledger, n)).label(n) for n in _TOKENS),
            func.sum(Ledger.cost_pusd).label("cost_pusd"),
        ).where(Ledger.rolled_up == false())
        if since is not None:
            daily = daily.where(UsageDaily.day >= since)
            ledger = ledger.where(Ledger.created_at >= day_start(since))
        if until is not None:
            daily = daily.where(UsageDaily.day <= until)
            ledger = ledger.where(Ledger.created_at < day_start(until + timedelta(days=1)))
        if key_id is not None:
            daily = daily.where(UsageDaily.key_id == key_id)
            ledger = ledger.where(Ledger.key_id == key_id)
        if user_id is not None:
            daily = daily.where(UsageDaily.user_id == user_id)
            ledger = ledger.where(Ledger.user_id == user_id)
        ledger = ledger.group_by(*(g for _, g in groups))
        both = union_all(daily, ledger).subquery()
        keys = [both.c[n] for n in names]
        sums = (cast(func.coalesce(func.sum(both.c[n]), 0), BigInteger).label(n) for n in SUMS)
        return select(*keys, *sums).group_by(*keys)

    async def usage(
        self,
        by: By = "model",
        since: date | None = None,
        until: date | None = None,
        *,
        key_id: int | None = None,
        user_id: int | None = None,
    ) -> list[UsageRow]:
        """Requests, tokens and cost per key, user, model or UTC day; ``since`` and ``until``
        are inclusive days; ``key_id``/``user_id`` narrow it to one key or user. Costliest
        first (days in order)."""
        if by not in BY:
            raise ValueError(f"by must be one of {', '.join(BY)}, not {by!r}")
        async with self.db.engine.connect() as conn:
            report = self._report(by, since, until, key_id, user_id)
            found = (await conn.execute(report)).all()
            names = await self._names(conn, by, [row[0] for row in found])
        rows = [UsageRow(names(row[0]), *(int(v) for v in row[1:])) for row in found]
        if by == "day":
            return sorted(rows, key=lambda r: r.group)
        return sorted(rows, key=lambda r: (-r.cost_pusd, -r.requests, r.group))

    async def _names(self, conn: AsyncConnection, by: By, groups: list[Any]) -> Any:
        if by in ("model", "day"):
            return lambda g: g.isoformat() if isinstance(g, date) else str(g)
        table = ApiKey if by == "key" else User
        ids = [g for g in groups if g]
        found: dict[Any, str] = {}
        if ids:
            rows = await conn.execute(select(table.id, table.name).where(table.id.in_(ids)))
            found = {row[0]: row[1] for row in rows}
        missing = "(no key)" if by == "key" else "(no user)"
        return lambda g: found.get(g, f"#{g}") if g else missing

    async def usage_by_day_and_model(
        self,
        since: date | None = None,
        until: date | None = None,
        *,
        key_id: int | None = None,
        user_id: int | None = None,
    ) -> list[tuple[date, UsageRow]]:
        """Sums per UTC day and model (the row's ``group`` is the model), days in order;
        like :meth:`usage`, exact whether or not the rows are rolled up yet."""
        groups = [self._group("day"), self._group("model")]
        async with self.db.engine.connect() as conn:
            found = (await conn.execute(self._sums(groups, since, until, key_id, user_id))).all()
        rows = [(_as_date(r[0]), UsageRow(str(r[1]), *(int(v) for v in r[2:]))) for r in found]
        return sorted(rows, key=lambda pair: (pair[0], pair[1].group))

    async def requests(
        self,
        since: date | None = None,
        until: date | None = None,
        *,
        key_id: int | None = None,
        user_id: int | None = None,
        before_id: int | None = None,
        limit: int = 50,
    ) -> list[LedgerEntry]:
        """Ledger rows (still kept, see :meth:`prune`), newest first; ``before_id`` pages on
        from the last row of a previous page."""
        query = (
            select(
                Ledger.__table__,
                ApiKey.name.label("key_name"),
                User.name.label("user_name"),
            )
            .outerjoin(ApiKey.__table__, Ledger.key_id == ApiKey.id)
            .outerjoin(User.__table__, Ledger.user_id == User.id)
            .order_by(Ledger.id.desc())
            .limit(limit)
        )
        if since is not None:
            query = query.where(Ledger.created_at >= day_start(since))
        if until is not None:
            query = query.where(Ledger.created_at < day_start(until + timedelta(days=1)))
        if key_id is not None:
            query = query.where(Ledger.key_id == key_id)
        if user_id is not None:
            query = query.where(Ledger.user_id == user_id)
        if before_id is not None:
            query = query.where(Ledger.id < before_id)
        async with self.db.engine.connect() as conn:
            found = (await conn.execute(query)).mappings().all()
        return [LedgerEntry.of(row) for row in found]

    # -- roll-up and retention ------------------------------------------------------------------

    async def rollup(self, older_than: datetime, *, batch: int = _BATCH) -> int:
        """Add ledger rows created before ``older_than`` to usage_daily; how many were added."""
        done = 0
        while True:
            async with self.db.engine.begin() as conn:
                claimed = await self._claim(conn, older_than, batch)
                if claimed:
                    await self._add_daily(conn, claimed)
            done += len(claimed)
            if len(claimed) < batch:
                return done

    async def _claim(
        self, conn: AsyncConnection, older_than: datetime, batch: int
    ) -> Sequence[Any]:
        pending = (
            select(Ledger.id)
            .where(Ledger.rolled_up == false(), Ledger.created_at < older_than)
            .order_by(Ledger.id)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
        claim = (
            update(Ledger)
            # Checked again on the row itself: a row another process claimed meanwhile is
            # skipped, never counted twice.
            .where(and_(Ledger.id.in_(pending.scalar_subquery()), Ledger.rolled_up == false()))
            .values(rolled_up=True)
            .returning(
                Ledger.created_at,
                Ledger.key_id,
                Ledger.user_id,
                Ledger.model,
                Ledger.status,
                Ledger.cost_pusd,
                *(getattr(Ledger, n) for n in _TOKENS),
            )
        )
        return (await conn.execute(claim)).all()

    async def _add_daily(self, conn: AsyncConnection, claimed: Sequence[Any]) -> None:
        sums: dict[tuple[date, int, str], dict[str, Any]] = {}
        for row in claimed:
            key = (_utc_day(row.created_at), row.key_id or NO_KEY, row.model)
            entry = sums.setdefault(
                key,
                {"day": key[0], "key_id": key[1], "model": key[2], "user_id": row.user_id}
                | dict.fromkeys(SUMS, 0),
            )
            entry["requests"] += 1
            entry["errors"] += row.status >= 400
            entry["cost_pusd"] += row.cost_pusd
            for name in _TOKENS:
                entry[name] += getattr(row, name)
        dialect = postgresql if self._postgres else sqlite
        insert = dialect.insert(UsageDaily)
        upsert = insert.on_conflict_do_update(
            index_elements=[UsageDaily.day, UsageDaily.key_id, UsageDaily.model],
            set_={
                "user_id": func.coalesce(insert.excluded.user_id, UsageDaily.user_id),
                **{n: getattr(UsageDaily, n) + insert.excluded[n] for n in SUMS},
            },
        )
        # In key order: concurrent roll-ups then lock shared daily rows in one order and wait
        # for each other instead of deadlocking (PostgreSQL detected it under CI).
        await conn.execute(upsert, [sums[key] for key in sorted(sums)])

    async def prune(
        self, retention_days: int, *, now: datetime | None = None, batch: int = _BATCH
    ) -> int:
        """Delete ledger rows older than ``retention_days`` (rolled up first, so reports keep
        them); how many were deleted."""
        if retention_days < 0:
            raise ValueError("retention_days must not be negative")
        cutoff = (now or datetime.now(UTC)) - timedelta(days=retention_days)
        await self.rollup(cutoff, batch=batch)
        deleted = 0
        while True:
            old = (
                select(Ledger.id)
                .where(Ledger.rolled_up == true(), Ledger.created_at < cutoff)
                .order_by(Ledger.id)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
            async with self.db.engine.begin() as conn:
                result = await conn.execute(
                    delete(Ledger).where(Ledger.id.in_(old.scalar_subquery()))
                )
            deleted += result.rowcount
            if result.rowcount < batch:
                return deleted
