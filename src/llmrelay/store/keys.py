"""API keys: created with a random secret shown once, stored only as a SHA-256 hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import select
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncSession

from llmrelay.store.db import Database
from llmrelay.store.tables import ApiKey, User

SECRET_PREFIX = "sk-"
_PREFIX_LENGTH = 11  # "sk-" and 8 characters: enough to tell keys apart in listings


class KeyError_(Exception):
    """A key operation that cannot be done (unknown name, duplicate name)."""


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

    def usable(self, now: datetime | None = None) -> bool:
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or _aware(self.expires_at) > now

    def allows(self, model: str) -> bool:
        return self.models is None or model.lower() in {m.lower() for m in self.models}


def _aware(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def hash_secret(secret: str) -> str:
    # Secrets are 192 random bits, so a fast hash is enough; lookups go by this digest.
    return hashlib.sha256(secret.encode("utf-8")).hexdigest()


def new_secret() -> str:
    return SECRET_PREFIX + secrets.token_hex(24)


def _record(key: ApiKey, user: User) -> KeyRecord:
    return KeyRecord(
        id=key.id,
        name=key.name,
        prefix=key.prefix,
        user=user.name,
        role=user.role,
        models=tuple(key.models) if key.models is not None else None,
        created_at=key.created_at,
        revoked_at=key.revoked_at,
        expires_at=key.expires_at,
    )


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
        secret: str | None = None,
    ) -> str:
        secret = secret or new_secret()
        async with self.db.session() as session, session.begin():
            owner = await self._user(session, user, role)
            session.add(
                ApiKey(
                    user_id=owner.id,
                    name=name,
                    prefix=secret[:_PREFIX_LENGTH],
                    secret_hash=hash_secret(secret),
                    models=models,
                    created_at=datetime.now(UTC),
                    expires_at=expires_at,
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

    async def list(self) -> list[KeyRecord]:
        async with self.db.session() as session:
            rows = await session.execute(
                select(ApiKey, User).join(User, ApiKey.user_id == User.id).order_by(ApiKey.id)
            )
            return [_record(k, u) for k, u in rows.tuples()]

    async def _by_name(self, session: AsyncSession, name: str) -> ApiKey:
        key = (
            await session.execute(select(ApiKey).where(ApiKey.name == name))
        ).scalar_one_or_none()
        if key is None:
            raise KeyError_(f"no key named {name!r}")
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
        query = (
            select(ApiKey.__table__, User.name.label("user_name"), User.role, User.disabled_at)
            .join(User.__table__, ApiKey.user_id == User.id)
            .where(ApiKey.secret_hash == digest)
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).mappings().first()
        if row is None:
            return None
        # The index lookup already matched; compare again in constant time all the same.
        if not hmac.compare_digest(row["secret_hash"], digest) or row["disabled_at"] is not None:
            return None
        return KeyRecord(
            id=row["id"],
            name=row["name"],
            prefix=row["prefix"],
            user=row["user_name"],
            role=row["role"],
            models=tuple(row["models"]) if row["models"] is not None else None,
            created_at=row["created_at"],
            revoked_at=row["revoked_at"],
            expires_at=row["expires_at"],
        )
