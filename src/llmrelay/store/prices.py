"""Prices per model, in picodollars per token (= USD per million tokens with 6 decimals).

What a request costs under a price is ``llmrelay.accounting.pricing``'s business.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite

from llmrelay.accounting.money import Money
from llmrelay.accounting.pricing import Rates, cached_input_price, rates, reasoning_price
from llmrelay.store.db import Database
from llmrelay.store.tables import Price


class PriceError(Exception):
    """A price operation that cannot be done (unknown model, bad amounts)."""


class PriceNotFound(PriceError):
    pass


@dataclass(frozen=True, slots=True)
class PriceRecord:
    model: str
    input_pusd: Money
    output_pusd: Money
    cached_input_pusd: Money | None = None  # None: the input price
    reasoning_pusd: Money | None = None  # None: the output price
    per_search_pusd: Money = 0
    updated_at: datetime | None = None
    rates: Rates = field(init=False, repr=False, compare=False)  # pricing.rates(self)

    def __post_init__(self) -> None:
        object.__setattr__(self, "rates", rates(self))  # (frozen: set once, here)

    @property
    def cached_input(self) -> Money:
        return cached_input_price(self)

    @property
    def reasoning(self) -> Money:
        return reasoning_price(self)


def _record(row: Any) -> PriceRecord:
    return PriceRecord(
        model=row.model,
        input_pusd=row.input_pusd,
        output_pusd=row.output_pusd,
        cached_input_pusd=row.cached_input_pusd,
        reasoning_pusd=row.reasoning_pusd,
        per_search_pusd=row.per_search_pusd,
        updated_at=row.updated_at,
    )


def _check(price: PriceRecord) -> None:
    if not price.model or len(price.model) > 200:
        raise PriceError("a model name has 1 to 200 characters")
    amounts = (
        price.input_pusd,
        price.output_pusd,
        price.cached_input_pusd,
        price.reasoning_pusd,
        price.per_search_pusd,
    )
    if any(a is not None and a < 0 for a in amounts):
        raise PriceError("prices must not be negative")


class PriceStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def set(self, price: PriceRecord) -> PriceRecord:
        """Create or replace the price of ``price.model``."""
        _check(price)
        values = {
            "model": price.model,
            "input_pusd": price.input_pusd,
            "cached_input_pusd": price.cached_input_pusd,
            "output_pusd": price.output_pusd,
            "reasoning_pusd": price.reasoning_pusd,
            "per_search_pusd": price.per_search_pusd,
            "updated_at": datetime.now(UTC),
        }
        dialect = postgresql if self.db.engine.dialect.name == "postgresql" else sqlite
        insert = dialect.insert(Price).values(values)
        upsert = insert.on_conflict_do_update(
            index_elements=[Price.model],
            set_={k: insert.excluded[k] for k in values if k != "model"},
        )
        async with self.db.engine.begin() as conn:
            await conn.execute(upsert)
        return await self.get(price.model)

    async def find(self, model: str) -> PriceRecord | None:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(select(Price).where(Price.model == model))).first()
        return None if row is None else _record(row)

    async def get(self, model: str) -> PriceRecord:
        found = await self.find(model)
        if found is None:
            raise PriceNotFound(f"no price for model {model!r}")
        return found

    async def list(self) -> list[PriceRecord]:
        async with self.db.engine.connect() as conn:
            rows = await conn.execute(select(Price).order_by(Price.model))
            return [_record(row) for row in rows]

    async def delete(self, model: str) -> None:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(delete(Price).where(Price.model == model))
        if not result.rowcount:
            raise PriceNotFound(f"no price for model {model!r}")
