"""``llmrelay keys``: create, list, reset, revoke API keys."""

from __future__ import annotations

import argparse
import sys

from llmrelay.accounting.money import Money, format_usd
from llmrelay.cli.common import add_common, count_arg, print_table, usd_arg, with_database
from llmrelay.settings import Settings
from llmrelay.store.keys import KeyError_, KeyRecord, KeyStore, parse_expires


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="manage API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints the secret last")
    add_common(create)
    create.add_argument("--name", required=True)
    create.add_argument("--user", default="default", help="owner (created if new)")
    create.add_argument("--models", help="comma-separated model allow-list")
    create.add_argument("--credit", type=usd_arg, help="the most this key may spend, in USD")
    create.add_argument("--rpm", type=count_arg, help="requests per minute")
    create.add_argument("--tpm", type=count_arg, help="tokens per minute")
    create.add_argument("--expires", help="ISO-8601 expiry time (UTC unless it has a zone)")
    for action in ("list", "reset", "revoke"):
        p = actions.add_parser(action)
        add_common(p)
        if action != "list":
            p.add_argument("name")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return with_database(settings, lambda db: _run(args, KeyStore(db)))
    except KeyError_ as exc:
        print(f"llmrelay: {exc}", file=sys.stderr)
        return 1


def _limit(value: Money | None) -> str:
    return "unlimited" if value is None else format_usd(value)


_HEADERS = (
    "NAME",
    "PREFIX",
    "USER",
    "STATUS",
    "MODELS",
    "CREDIT",
    "SPENT",
    "RPM",
    "TPM",
    "EXPIRES",
    "CREATED",
    "LAST USED",
)


def _list(records: list[KeyRecord]) -> None:
    print_table(
        _HEADERS,
        (
            (
                r.name,
                r.prefix,
                r.user,
                r.status(),
                ",".join(r.models) if r.models is not None else "*",
                _limit(r.credit_pusd),
                format_usd(r.spent_pusd),
                r.rpm,
                r.tpm,
                f"{r.expires_at:%Y-%m-%d %H:%M}" if r.expires_at else None,
                f"{r.created_at:%Y-%m-%d %H:%M}",
                f"{r.last_used_at:%Y-%m-%d %H:%M}" if r.last_used_at else None,
            )
            for r in records
        ),
    )


async def _run(args: argparse.Namespace, store: KeyStore) -> int:
    if args.action == "create":
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        secret = await store.create(
            args.name,
            user=args.user,
            models=models,
            expires_at=parse_expires(args.expires) if args.expires else None,
            credit_pusd=args.credit,
            rpm=args.rpm,
            tpm=args.tpm,
        )
        print(f"created key {args.name!r}; the secret is shown only once:")
        print(secret)
    elif args.action == "list":
        _list(await store.list())
    elif args.action == "reset":
        secret = await store.reset(args.name)
        print(f"reset key {args.name!r}; the old secret no longer works. New secret:")
        print(secret)
    elif args.action == "revoke":
        await store.revoke(args.name)
        print(f"revoked key {args.name!r}")
    return 0
