"""The database schema. Changes go through an Alembic migration in ``migrations/versions``."""

from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Date,
    DateTime,
    ForeignKey,
    Index,
    Integer,
    String,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

# SQLite only auto-increments an INTEGER PRIMARY KEY (the rowid); PostgreSQL gets a BIGSERIAL.
BigId = BigInteger().with_variant(Integer(), "sqlite")


class Base(DeclarativeBase):
    pass


class User(Base):
    __tablename__ = "users"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    role: Mapped[str] = mapped_column(String(16), default="user")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    disabled_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # Money is integer picodollars (llmrelay.accounting.money). NULL balance: unlimited.
    balance_pusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spent_pusd: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    # Console sign-in: a PHC-style scrypt string (NULL: no password), and a counter that a
    # password change or disabling bumps, which ends every console session made before it.
    password_hash: Mapped[str | None] = mapped_column(String(255), nullable=True)
    session_version: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))


class SigninToken(Base):
    """A one-time console sign-in link: only its SHA-256 is kept; it dies on first use."""

    __tablename__ = "signin_tokens"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    token_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    expires_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    user_id: Mapped[int] = mapped_column(ForeignKey("users.id"), index=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    prefix: Mapped[str] = mapped_column(String(16))
    secret_hash: Mapped[str] = mapped_column(String(64), unique=True)
    models: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    last_used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    revoked_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True), nullable=True)
    # NULL credit: no limit; else the total this key may spend.
    credit_pusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    spent_pusd: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    rpm: Mapped[int | None] = mapped_column(Integer, nullable=True)
    tpm: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Channel(Base):
    """An upstream channel added with the CLI or the admin API (config-file ones are not here)."""

    __tablename__ = "channels"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(128), unique=True)
    # The whole ChannelConfig, upstream keys included; listings never show the keys.
    config: Mapped[dict[str, object]] = mapped_column(JSON)
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Price(Base):
    """Prices per token in picodollars (given per million tokens in USD: the same number)."""

    __tablename__ = "prices"

    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    input_pusd: Mapped[int] = mapped_column(BigInteger)
    cached_input_pusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # = input
    output_pusd: Mapped[int] = mapped_column(BigInteger)
    reasoning_pusd: Mapped[int | None] = mapped_column(BigInteger, nullable=True)  # = output
    per_search_pusd: Mapped[int] = mapped_column(BigInteger, default=0, server_default=text("0"))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Ledger(Base):
    """One row per request. ``rolled_up`` rows are already counted in ``usage_daily``."""

    __tablename__ = "ledger"
    __table_args__ = (Index("ix_ledger_rolled_up_created_at", "rolled_up", "created_at"),)

    id: Mapped[int] = mapped_column(BigId, primary_key=True, autoincrement=True)
    request_id: Mapped[str] = mapped_column(String(64), index=True)
    # In UTC: SQLite keeps the wall time without its zone, and reports group by UTC day.
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), index=True)
    # The key's and the user's ids, without foreign keys (migration 0006: they cost the
    # database a lookup and a row lock of each for every row; keys and users are never deleted).
    key_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    model: Mapped[str] = mapped_column(String(200))
    channel: Mapped[str | None] = mapped_column(String(128), nullable=True)
    prompt_tokens: Mapped[int] = mapped_column(Integer, default=0)
    cached_tokens: Mapped[int] = mapped_column(Integer, default=0)
    completion_tokens: Mapped[int] = mapped_column(Integer, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(Integer, default=0)
    search_calls: Mapped[int] = mapped_column(Integer, default=0, server_default=text("0"))
    estimated: Mapped[bool] = mapped_column(Boolean, default=False)
    stream: Mapped[bool] = mapped_column(Boolean, default=False)
    cost_pusd: Mapped[int] = mapped_column(BigInteger, default=0)
    latency_ms: Mapped[int] = mapped_column(Integer, default=0)
    ttft_ms: Mapped[int | None] = mapped_column(Integer, nullable=True)
    status: Mapped[int] = mapped_column(Integer)  # the HTTP status the client got
    error_type: Mapped[str | None] = mapped_column(String(64), nullable=True)
    rolled_up: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class UsageDaily(Base):
    """Ledger rows summed per UTC day, key and model (key_id 0: requests without a key)."""

    __tablename__ = "usage_daily"

    day: Mapped[date] = mapped_column(Date, primary_key=True)
    key_id: Mapped[int] = mapped_column(Integer, primary_key=True)
    model: Mapped[str] = mapped_column(String(200), primary_key=True)
    user_id: Mapped[int | None] = mapped_column(Integer, nullable=True)
    requests: Mapped[int] = mapped_column(BigInteger, default=0)
    errors: Mapped[int] = mapped_column(BigInteger, default=0)
    prompt_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    cached_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    completion_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    reasoning_tokens: Mapped[int] = mapped_column(BigInteger, default=0)
    search_calls: Mapped[int] = mapped_column(BigInteger, default=0)
    cost_pusd: Mapped[int] = mapped_column(BigInteger, default=0)


class LedgerJournal(Base):
    """Per journal of a running (or dead) process: the highest sequence number of its rows
    that the ledger holds (``accounting/journal.py``)."""

    __tablename__ = "ledger_journals"

    instance: Mapped[str] = mapped_column(String(64), primary_key=True)
    seq: Mapped[int] = mapped_column(BigInteger)
