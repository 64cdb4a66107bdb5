"""Console credentials: user passwords (scrypt, PHC strings) and one-time sign-in links.

A password is kept as ``$scrypt$ln=15,r=8,p=3$<salt>$<hash>`` (base64 without padding, as PHC
strings write it), so the cost can be raised later while old hashes keep verifying. A sign-in
link carries 256 random bits; only their SHA-256 is stored (like API keys, a fast hash is
enough for a random secret), it expires, and the first use consumes it atomically.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cache
from typing import Any, TypeVar

from sqlalchemy import delete, insert, or_, select, update

from llmrelay.store.db import Database
from llmrelay.store.tables import SigninToken, User
from llmrelay.store.users import UserError, UserNotFound

# OWASP's scrypt floor (N=2**15, r=8, p=3): 32 MiB and a few hundred milliseconds per hash.
SCRYPT_LOG2_N = 15
SCRYPT_R = 8
SCRYPT_P = 3
# Hashes run on their own two threads: a flood of sign-ins waits in their queue, never holds
# more than 64 MiB, and leaves the default executor (SQLite ledger writes) alone.
HASH_THREADS = 2
SALT_BYTES = 16
HASH_BYTES = 32
MIN_PASSWORD = 8
MAX_PASSWORD = 1024
LINK_LIFETIME = timedelta(hours=24)
T = TypeVar("T")
# What a hash costs at most: refuses stored parameters that would take the server down.
_MAX_LOG2_N = 20


class PasswordError(UserError):
    """A password that breaks the rules (too short, too long)."""


def check_password_rules(password: str) -> None:
    if len(password) < MIN_PASSWORD:
        raise PasswordError(f"a password has at least {MIN_PASSWORD} characters")
    if len(password) > MAX_PASSWORD:
        raise PasswordError(f"a password has at most {MAX_PASSWORD} characters")


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode().rstrip("=")


def _unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4), validate=True)


def _scrypt(password: str, salt: bytes, log2_n: int, r: int, p: int, length: int) -> bytes:
    n = 2**log2_n
    return hashlib.scrypt(
        password.encode("utf-8"), salt=salt, n=n, r=r, p=p, dklen=length, maxmem=256 * r * n * p
    )


def hash_password(password: str) -> str:
    """A PHC-style scrypt string with a fresh random salt (slow on purpose: run off the loop)."""
    salt = secrets.token_bytes(SALT_BYTES)
    digest = _scrypt(password, salt, SCRYPT_LOG2_N, SCRYPT_R, SCRYPT_P, HASH_BYTES)
    params = f"ln={SCRYPT_LOG2_N},r={SCRYPT_R},p={SCRYPT_P}"
    return f"$scrypt${params}${_b64(salt)}${_b64(digest)}"


@cache
def _hasher() -> ThreadPoolExecutor:
    return ThreadPoolExecutor(HASH_THREADS, thread_name_prefix="llmrelay-password")


async def off_loop(work: Callable[..., T], *args: Any) -> T:
    """Run a password hash or check on the hashing threads."""
    return await asyncio.get_running_loop().run_in_executor(_hasher(), work, *args)


@cache
def _dummy_hash() -> str:
    """Checking against this costs what a real check costs: a missing user answers as slowly."""
    return hash_password(secrets.token_urlsafe(16))


def verify_password(password: str, stored: str | None) -> bool:
    """Whether ``password`` matches ``stored``, compared in constant time. Without a stored
    hash (no such user, or no password) the same work is done and the answer is False."""
    if stored is None:
        verify_password(password, _dummy_hash())
        return False
    try:
        _, scheme, params, salt_text, digest_text = stored.split("$")
        values = dict(part.split("=", 1) for part in params.split(","))
        log2_n, r, p = int(values["ln"]), int(values["r"]), int(values["p"])
        salt, expected = _unb64(salt_text), _unb64(digest_text)
    except (ValueError, KeyError):
        return False
    if scheme != "scrypt" or not 1 <= log2_n <= _MAX_LOG2_N or not 1 <= r * p <= 64:
        return False
    return hmac.compare_digest(_scrypt(password, salt, log2_n, r, p, len(expected)), expected)


def _token_hash(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def link_url(base_url: str, token: str) -> str:
    """The sign-in link: the token goes in the query, which the access log leaves out."""
    return f"{base_url.rstrip('/')}/console/signin?token={token}"


@dataclass(frozen=True, slots=True)
class SessionUser:
    """What a console session needs to know about its user, read fresh on every page."""

    id: int
    name: str
    role: str
    enabled: bool
    has_password: bool
    session_version: int


def _session_user(row: Any) -> SessionUser:
    return SessionUser(
        id=row.id,
        name=row.name,
        role=row.role,
        enabled=row.disabled_at is None,
        has_password=row.password_hash is not None,
        session_version=row.session_version,
    )


class Credentials:
    def __init__(self, db: Database) -> None:
        self.db = db

    async def _one(self, *conditions: Any) -> Any:
        async with self.db.engine.connect() as conn:
            return (await conn.execute(select(User.__table__).where(*conditions))).first()

    async def session_user(self, user_id: int) -> SessionUser | None:
        row = await self._one(User.id == user_id)
        return None if row is None else _session_user(row)

    async def check_password(self, name: str, password: str) -> SessionUser | None:
        """The user if the password is theirs and they may sign in; else None, after the same
        work whatever the reason (no enumeration of user names by answer or by time)."""
        row = await self._one(User.name == name)
        stored = row.password_hash if row is not None else None
        if not await off_loop(verify_password, password, stored):
            return None
        user = _session_user(row)
        return user if user.enabled else None

    async def set_password(self, name: str, password: str) -> int:
        """Set (or replace) the password and end the user's sessions; the new session version."""
        check_password_rules(password)
        stored = await off_loop(hash_password, password)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(
                update(User)
                .where(User.name == name)
                .values(password_hash=stored, session_version=User.session_version + 1)
                .returning(User.session_version)
            )
            version = result.scalar_one_or_none()
        if version is None:
            raise UserNotFound(f"no user named {name!r}")
        return int(version)

    async def new_signin_link(
        self, name: str, lifetime: timedelta = LINK_LIFETIME
    ) -> tuple[str, datetime]:
        """A one-time sign-in token for ``name`` and when it expires. It replaces the user's
        earlier unused links; expired and used links of anyone are cleared on the way."""
        token = secrets.token_urlsafe(32)
        now = datetime.now(UTC)
        expires = now + lifetime
        async with self.db.engine.begin() as conn:
            user_id = (await conn.execute(select(User.id).where(User.name == name))).scalar()
            if user_id is None:
                raise UserNotFound(f"no user named {name!r}")
            await conn.execute(
                delete(SigninToken).where(
                    or_(
                        SigninToken.user_id == user_id,
                        SigninToken.expires_at <= now,
                        SigninToken.used_at.is_not(None),
                    )
                )
            )
            await conn.execute(
                insert(SigninToken).values(
                    user_id=user_id,
                    token_hash=_token_hash(token),
                    created_at=now,
                    expires_at=expires,
                )
            )
        return token, expires

    def _live(self, token: str, now: datetime) -> list[Any]:
        return [
            SigninToken.token_hash == _token_hash(token),
            SigninToken.used_at.is_(None),
            SigninToken.expires_at > now,
        ]

    async def peek_link(self, token: str) -> SessionUser | None:
        """Whose link this is, if it is unused, unexpired and its user enabled; not consumed."""
        query = (
            select(User.__table__)
            .join(SigninToken.__table__, SigninToken.user_id == User.id)
            .where(*self._live(token, datetime.now(UTC)))
        )
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        if row is None:
            return None
        user = _session_user(row)
        return user if user.enabled else None

    async def redeem_link(self, token: str) -> SessionUser | None:
        """Consume the link and return its user; None if it is used, expired or unknown, or
        its user is disabled. Of two requests racing with one link, only one gets the user."""
        now = datetime.now(UTC)
        async with self.db.engine.begin() as conn:
            used = await conn.execute(
                update(SigninToken)
                .where(*self._live(token, now))
                .values(used_at=now)
                .returning(SigninToken.user_id)
            )
            user_id = used.scalar_one_or_none()
        if user_id is None:
            return None
        user = await self.session_user(int(user_id))
        return user if user is not None and user.enabled else None
