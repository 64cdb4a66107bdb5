"""Users: a role, an optional prepaid balance (picodollars), and the keys they own."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from llmrelay.accounting.money import Money
from llmrelay.store.db import Database
from llmrelay.store.tables import ApiKey, User

Role = Literal["admin", "user"]
ROLES: tuple[Role, ...] = ("admin", "user")


class UserError(Exception):
    """A user operation that cannot be done (unknown name, duplicate name)."""


class UserNotFound(UserError):
    pass


@dataclass(frozen=True, slots=True)
class UserRecord:
    id: int
    name: str
    role: str
    balance_pusd: Money | None  # None: unlimited
    spent_pusd: Money
    created_at: datetime
    disabled_at: datetime | None
    keys: int = 0
    has_password: bool = False  # may sign in to the console with a password
    session_version: int = 0  # bumped to end the user's console sessions

    @property
    def enabled(self) -> bool:
        return self.disabled_at is None


def _record(row: Any, keys: int = 0) -> UserRecord:
    return UserRecord(
        id=row.id,
        name=row.name,
        role=row.role,
        balance_pusd=row.balance_pusd,
        spent_pusd=row.spent_pusd,
        created_at=row.created_at,
        disabled_at=row.disabled_at,
        keys=keys,
        has_password=row.password_hash is not None,
        session_version=row.session_version,
    )


def check_role(role: str) -> Role:
    if role not in ROLES:
        raise UserError(f"role must be one of {', '.join(ROLES)}, not {role!r}")
    return role


class UserStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def create(self, name: str, *, role: str = "user", balance: Money | None = None) -> int:
        check_role(role)
        if not name or len(name) > 128:
            raise UserError("a user name has 1 to 128 characters")
        async with self.db.session() as session, session.begin():
            user = User(name=name, role=role, balance_pusd=balance, created_at=datetime.now(UTC))
            session.add(user)
            try:
                await session.flush()
            except IntegrityError:
                raise UserError(f"a user named {name!r} already exists") from None
            return user.id

    def _listing(self) -> Any:
        keys = (
            select(func.count(ApiKey.id))
            .where(ApiKey.user_id == User.id)
            .correlate(User)
            .scalar_subquery()
        )
        return select(User, keys.label("keys"))

    async def get(self, name: str) -> UserRecord:
        async with self.db.session() as session:
            row = (await session.execute(self._listing().where(User.name == name))).first()
        if row is None:
            raise UserNotFound(f"no user named {name!r}")
        return _record(row[0], row[1])

    async def list(self) -> list[UserRecord]:
        async with self.db.session() as session:
            rows = await session.execute(self._listing().order_by(User.id))
            return [_record(user, keys) for user, keys in rows]

    async def _update(self, name: str, **values: Any) -> None:
        async with self.db.engine.begin() as conn:
            result = await conn.execute(update(User).where(User.name == name).values(**values))
        if not result.rowcount:
            raise UserNotFound(f"no user named {name!r}")

    async def set_balance(self, name: str, balance: Money | None) -> None:
        """The remaining prepaid balance (None: unlimited); what was spent is kept."""
        await self._update(name, balance_pusd=balance)

    async def set_role(self, name: str, role: str) -> None:
        await self._update(name, role=check_role(role))

    async def disable(self, name: str) -> None:
        """The user's keys stop working within a second (the key cache's lifetime), and their
        console sessions end (a new session version: enabling again does not revive them)."""
        async with self.db.engine.begin() as conn:
            await conn.execute(
                update(User)
                .where(User.name == name, User.disabled_at.is_(None))
                .values(disabled_at=datetime.now(UTC), session_version=User.session_version + 1)
            )
        await self.get(name)  # raises if unknown

    async def enable(self, name: str) -> None:
        await self._update(name, disabled_at=None)
