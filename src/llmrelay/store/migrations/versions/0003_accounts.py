"""accounts: balances, key limits, prices, ledger, daily usage

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-23
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None

_BIG_ID = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def _money(name: str, *, nullable: bool = False, zero: bool = True) -> sa.Column[int]:
    default = sa.text("0") if zero and not nullable else None
    return sa.Column(name, sa.BigInteger(), nullable=nullable, server_default=default)


def _count(name: str) -> sa.Column[int]:
    return sa.Column(name, sa.Integer(), nullable=False)


def _totals() -> list[sa.Column[int]]:
    names = ("prompt_tokens", "cached_tokens", "completion_tokens", "reasoning_tokens")
    return [sa.Column(n, sa.BigInteger(), nullable=False) for n in names]


def upgrade() -> None:
    op.add_column("users", _money("balance_pusd", nullable=True))
    op.add_column("users", _money("spent_pusd"))
    op.add_column("api_keys", _money("credit_pusd", nullable=True))
    op.add_column("api_keys", _money("spent_pusd"))
    op.add_column("api_keys", sa.Column("rpm", sa.Integer(), nullable=True))
    op.add_column("api_keys", sa.Column("tpm", sa.Integer(), nullable=True))
    op.create_table(
        "prices",
        sa.Column("model", sa.String(200), primary_key=True),
        _money("input_pusd", zero=False),
        _money("cached_input_pusd", nullable=True),
        _money("output_pusd", zero=False),
        _money("reasoning_pusd", nullable=True),
        _money("per_search_pusd"),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
    )
    _create_ledger()
    op.create_table(
        "usage_daily",
        sa.Column("day", sa.Date(), primary_key=True),
        sa.Column("key_id", sa.Integer(), primary_key=True),
        sa.Column("model", sa.String(200), primary_key=True),
        sa.Column("user_id", sa.Integer(), nullable=True),
        sa.Column("requests", sa.BigInteger(), nullable=False),
        sa.Column("errors", sa.BigInteger(), nullable=False),
        *_totals(),
        sa.Column("search_calls", sa.BigInteger(), nullable=False),
        _money("cost_pusd", zero=False),
    )


def _create_ledger() -> None:
    op.create_table(
        "ledger",
        sa.Column("id", _BIG_ID, primary_key=True, autoincrement=True),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("key_id", sa.Integer(), sa.ForeignKey("api_keys.id"), nullable=True),
        sa.Column("user_id", sa.Integer(), sa.ForeignKey("users.id"), nullable=True),
        sa.Column("model", sa.String(200), nullable=False),
        sa.Column("channel", sa.String(128), nullable=True),
        _count("prompt_tokens"),
        _count("cached_tokens"),
        _count("completion_tokens"),
        _count("reasoning_tokens"),
        sa.Column("search_calls", sa.Integer(), nullable=False, server_default=sa.text("0")),
        sa.Column("estimated", sa.Boolean(), nullable=False),
        sa.Column("stream", sa.Boolean(), nullable=False),
        _money("cost_pusd", zero=False),
        _count("latency_ms"),
        sa.Column("ttft_ms", sa.Integer(), nullable=True),
        _count("status"),
        sa.Column("error_type", sa.String(64), nullable=True),
        sa.Column("rolled_up", sa.Boolean(), nullable=False, server_default=sa.false()),
    )
    op.create_index("ix_ledger_request_id", "ledger", ["request_id"])
    op.create_index("ix_ledger_created_at", "ledger", ["created_at"])
    op.create_index("ix_ledger_rolled_up_created_at", "ledger", ["rolled_up", "created_at"])


def downgrade() -> None:
    op.drop_table("usage_daily")
    op.drop_index("ix_ledger_rolled_up_created_at", "ledger")
    op.drop_index("ix_ledger_created_at", "ledger")
    op.drop_index("ix_ledger_request_id", "ledger")
    op.drop_table("ledger")
    op.drop_table("prices")
    with op.batch_alter_table("api_keys") as batch:
        for name in ("tpm", "rpm", "spent_pusd", "credit_pusd"):
            batch.drop_column(name)
    with op.batch_alter_table("users") as batch:
        for name in ("spent_pusd", "balance_pusd"):
            batch.drop_column(name)
