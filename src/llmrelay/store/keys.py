"""API keys: created with a random secret shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import RowMapping, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from llmrelay.accounting.money import Money
from llmrelay.store.db import Database
from llmrelay.store.tables import ApiKey, User

SECRET_PREFIX = "sk-"
_PREFIX_LENGTH = 11  # "sk-" and 8 characters: enough to tell keys apart in listings


class KeyError_(Exception):
    """A key operation that cannot be done (unknown name, duplicate name)."""


class KeyNotFound(KeyError_):
    pass


@dataclass(frozen=True, slots=True)
class KeyRecord:
    id: int
    name: str
    prefix: str
    user: str
    role: str
    models: tuple[str, ...] | None
    created_at: datetime
    revoked_at: datetime | None
    expires_at: datetime | None
    user_id: int = 0
    credit_pusd: Money | None = None  # None: no credit limit
    spent_pusd: Money = 0
    rpm: int | None = None
    tpm: int | None = None
    user_disabled: bool = False
    user_balance_pusd: Money | None = None  # the user's remaining balance; None: unlimited
    user_spent_pusd: Money = 0
    last_used_at: datetime | None = None  # the newest request's time, as the ledger has it
    # Whether requests need a reservation or a rate check (any limit at all): worked out once
    # here, since every request asks.
    metered: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        metered = (
            self.credit_pusd is not None
            or self.user_balance_pusd is not None
            or self.rpm is not None
            or self.tpm is not None
        )
        object.__setattr__(self, "metered", metered)  # (frozen: set once, here)

    def credit_left(self) -> Money | None:
        """What the key may still spend (as of the lookup), or None without a limit."""
        return None if self.credit_pusd is None else self.credit_pusd - self.spent_pusd

    def usable(self, now: datetime | None = None) -> bool:
        return self.status(now) == "active"

    def status(self, now: datetime | None = None) -> str:
        """``active``, ``revoked``, ``disabled`` (its user is) or ``expired``."""
        if self.revoked_at is not None:
            return "revoked"
        if self.user_disabled:
            return "disabled"
        if self.expires_at is not None and _aware(self.expires_at) <= (now or datetime.now(UTC)):
            return "expired"
        return "active"

    def allows(self, model: str) -> bool:
        return self.models is None or model.lower() in {m.lower() for m in self.models}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def parse_expires(text: str) -> datetime:
    """An ISO-8601 time (``2027-01-01``, ``2027-01-01T12:00:00Z``); without a zone, UTC."""
    try:
        value = datetime.fromisoformat(text.strip())
    except ValueError:
        raise KeyError_(
            f"expiry {text!r} is not an ISO-8601 time (e.g. 2027-01-01T00:00:00Z)"
        ) from None
    return _aware(value)


def hash_secret(secret: str) -> str:
    # Secrets are 192 random bits, so a fast hash is enough; lookups go by this digest.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(24)


# The settings a key carries besides its secret: what create takes and update changes.
LIMITS = ("models", "credit_pusd", "rpm", "tpm", "expires_at")


def _record(key: RowMapping, user: str, role: str) -> KeyRecord:
    return KeyRecord(
        id=key["id"],
        name=key["name"],
        prefix=key["prefix"],
        user=user,
        role=role,
        models=tuple(key["models"]) if key["models"] is not None else None,
        created_at=key["created_at"],
        revoked_at=key["revoked_at"],
        expires_at=key["expires_at"],
        user_id=key["user_id"],
        credit_pusd=key["credit_pusd"],
        spent_pusd=key["spent_pusd"],
        rpm=key["rpm"],
        tpm=key["tpm"],
        user_disabled=key["disabled_at"] is not None,
        user_balance_pusd=key["user_balance_pusd"],
        user_spent_pusd=key["user_spent_pusd"],
        last_used_at=key["last_used_at"],
    )


def _check_limits(values: Mapping[str, Any]) -> None:
    for name in ("credit_pusd", "rpm", "tpm"):
        value = values.get(name)
        if value is not None and value < 0:
            raise KeyError_(f"{name} must not be negative")
    if values.get("models") == []:
        raise KeyError_("an empty model allow-list would allow nothing; leave it out instead")


class KeyStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _user(self, session: AsyncSession, name: str, role: str) -> User:
        user = (await session.execute(select(User).where(User.name == name))).scalar_one_or_none()
        if user is None:
            user = User(name=name, role=role, created_at=datetime.now(UTC))
            session.add(user)
            await session.flush()
        return user

    async def create(
        self,
        name: str,
        *,
        user: str = "default",
        role: str = "user",
        models: list[str] | None = None,
        expires_at: datetime | None = None,
        credit_pusd: Money | None = None,
        rpm: int | None = None,
        tpm: int | None = None,
        secret: str | None = None,
    ) -> str:
        limits = {"models": models, "credit_pusd": credit_pusd, "rpm": rpm, "tpm": tpm}
        _check_limits(limits)
        if not name or len(name) > 128:
            raise KeyError_("a key name has 1 to 128 characters")
        secret = secret or new_secret()
        async with self.db.session() as session, session.begin():
            owner = await self._user(session, user, role)
            session.add(
                ApiKey(
                    user_id=owner.id,
                    name=name,
                    prefix=secret[:_PREFIX_LENGTH],
                    secret_hash=hash_secret(secret),
                    created_at=datetime.now(UTC),
                    expires_at=expires_at,
                    **limits,
                )
            )
            try:
                await session.flush()
            except IntegrityError:
                raise KeyError_(f"a key named {name!r} already exists") from None
        return secret

    async def ensure_admin(self, secret: str | None = None) -> str | None:
        """Create the first admin key if there is none; return its secret, else None."""
        async with self.db.session() as session:
            found = await session.execute(select(User.id).where(User.role == "admin").limit(1))
            if found.first() is not None:
                return None
        return await self.create("admin", user="admin", role="admin", secret=secret)

    def _select(self) -> Any:
        return select(
            ApiKey.__table__,
            User.name.label("user_name"),
            User.role,
            User.disabled_at,
            User.balance_pusd.label("user_balance_pusd"),
            User.spent_pusd.label("user_spent_pusd"),
        ).join(User.__table__, ApiKey.user_id == User.id)

    async def list(self, *, user: str | None = None) -> list[KeyRecord]:
        query = self._select().order_by(ApiKey.id)
        if user is not None:
            query = query.where(User.name == user)
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).mappings().all()
        return [_record(row, row["user_name"], row["role"]) for row in rows]

    async def get(self, name: str) -> KeyRecord:
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(self._select().where(ApiKey.name == name))).mappings().first()
        if row is None:
            raise KeyNotFound(f"no key named {name!r}")
        return _record(row, row["user_name"], row["role"])

    async def update(self, name: str, **changes: Any) -> None:
        """Change a key's limits (see LIMITS); its secret and spend stay as they are."""
        unknown = set(changes) - set(LIMITS)
        if unknown:
            raise KeyError_(f"cannot change {', '.join(sorted(unknown))} of a key")
        _check_limits(changes)
        if not changes:
            await self.get(name)
            return
        async with self.db.engine.begin() as conn:
            result = await conn.execute(update(ApiKey).where(ApiKey.name == name).values(changes))
        if not result.rowcount:
            raise KeyNotFound(f"no key named {name!r}")

    async def _by_name(self, session: AsyncSession, name: str) -> ApiKey:
        key = (
            await session.execute(select(ApiKey).where(ApiKey.name == name))
        ).scalar_one_or_none()
        if key is None:
            raise KeyNotFound(f"no key named {name!r}")
        return key

    async def reset(self, name: str) -> str:
        """A new secret for the same key and settings; the old secret stops working."""
        secret = new_secret()
        async with self.db.session() as session, session.begin():
            key = await self._by_name(session, name)
            key.secret_hash = hash_secret(secret)
            key.prefix = secret[:_PREFIX_LENGTH]
            key.revoked_at = None
        return secret

    async def revoke(self, name: str) -> None:
        async with self.db.session() as session, session.begin():
            key = await self._by_name(session, name)
            key.revoked_at = datetime.now(UTC)

    async def lookup(self, secret: str) -> KeyRecord | None:
        return await self.lookup_digest(hash_secret(secret))

    async def lookup_digest(self, digest: str) -> KeyRecord | None:
        # Core, not an ORM session: this runs for every key-cache miss on the request path.
        query = self._select().where(ApiKey.secret_hash == digest)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        # The index lookup already matched; compare again in constant time all the same.
        if not hmac.compare_digest(row["secret_hash"], digest) or row["disabled_at"] is not None:
            return None
        return _record(row, row["user_name"], row["role"])
