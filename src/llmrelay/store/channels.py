"""Channels added at run time (CLI, admin API), stored as their JSON config."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError

from llmrelay.settings import ChannelConfig
from llmrelay.store.db import Database
from llmrelay.store.tables import Channel


class ChannelError(Exception):
    """A channel operation that cannot be done (unknown or duplicate name)."""


def to_json(config: ChannelConfig) -> dict[str, Any]:
    data = config.model_dump(mode="json")
    data["keys"] = [k.get_secret_value() for k in config.keys]
    return data


class ChannelStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def list(self) -> list[ChannelConfig]:
        async with self.db.session() as session:
            rows = await session.execute(select(Channel.config).order_by(Channel.id))
            return [ChannelConfig.model_validate(c) for c in rows.scalars()]

    async def get(self, name: str) -> ChannelConfig:
        async with self.db.session() as session:
            row = await session.execute(select(Channel.config).where(Channel.name == name))
            config = row.scalar_one_or_none()
        if config is None:
            raise ChannelError(f"no channel named {name!r}")
        return ChannelConfig.model_validate(config)

    async def add(self, config: ChannelConfig) -> None:
        async with self.db.session() as session, session.begin():
            session.add(
                Channel(name=config.name, config=to_json(config), updated_at=datetime.now(UTC))
            )
            try:
                await session.flush()
            except IntegrityError:
                raise ChannelError(f"a channel named {config.name!r} already exists") from None

    async def update(self, config: ChannelConfig) -> None:
        async with self.db.session() as session, session.begin():
            row = (
                await session.execute(select(Channel).where(Channel.name == config.name))
            ).scalar_one_or_none()
            if row is None:
                raise ChannelError(f"no channel named {config.name!r}")
            row.config = to_json(config)
            row.updated_at = datetime.now(UTC)

    async def remove(self, name: str) -> None:
        async with self.db.session() as session, session.begin():
            result = await session.execute(delete(Channel).where(Channel.name == name))
            if not result.rowcount:  # type: ignore[attr-defined]
                raise ChannelError(f"no channel named {name!r}")
