"""``llmrelay keys``: create, list, reset, revoke API keys."""

from __future__ import annotations

import argparse
import sys
from datetime import datetime

from llmrelay.cli.common import add_common, with_database
from llmrelay.settings import Settings
from llmrelay.store.keys import KeyError_, KeyStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    keys = sub.add_parser("keys", help="manage API keys")
    actions = keys.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a key; prints the secret last")
    add_common(create)
    create.add_argument("--name", required=True)
    create.add_argument("--user", default="default", help="owner (created if new)")
    create.add_argument("--models", help="comma-separated model allow-list")
    create.add_argument("--expires", help="ISO-8601 expiry time")
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


async def _run(args: argparse.Namespace, store: KeyStore) -> int:
    if args.action == "create":
        models = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        expires = datetime.fromisoformat(args.expires) if args.expires else None
        secret = await store.create(args.name, user=args.user, models=models, expires_at=expires)
        print(f"created key {args.name!r}; the secret is shown only once:")
        print(secret)
    elif args.action == "list":
        print(f"{'NAME':<20} {'PREFIX':<12} {'USER':<12} {'STATUS':<8} {'MODELS':<24} CREATED")
        for r in await store.list():
            status = "active" if r.usable() else ("revoked" if r.revoked_at else "expired")
            allowed = ",".join(r.models) if r.models is not None else "*"
            print(
                f"{r.name:<20} {r.prefix:<12} {r.user:<12} {status:<8} {allowed:<24} "
                f"{r.created_at:%Y-%m-%d %H:%M}"
            )
    elif args.action == "reset":
        secret = await store.reset(args.name)
        print(f"reset key {args.name!r}; the old secret no longer works. New secret:")
        print(secret)
    elif args.action == "revoke":
        await store.revoke(args.name)
        print(f"revoked key {args.name!r}")
    return 0
