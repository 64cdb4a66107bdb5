"""The ``llmrelay`` command: ``serve`` and ``keys``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Awaitable, Callable
from datetime import datetime
from pathlib import Path
from typing import Any

from llmrelay import __version__, logs
from llmrelay.settings import Settings, load_settings


def _common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data-dir", type=Path, help="where the database lives")
    parser.add_argument("--config", type=Path, help="YAML config file")
    parser.add_argument("--database-url", help="SQLAlchemy URL (default: SQLite in --data-dir)")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrelay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llmrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the HTTP server")
    _common(serve)
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port to listen on (default 8080)")
    serve.add_argument(
        "--relaxed-json",
        action="store_true",
        default=None,
        help="accept JSON5 bodies (trailing commas, comments)",
    )
    serve.add_argument("--log-level", help="debug, info, warning, error")

    keys = sub.add_parser("keys", help="manage API keys")
    keys_sub = keys.add_subparsers(dest="action", required=True)
    create = keys_sub.add_parser("create", help="create a key; prints the secret last")
    _common(create)
    create.add_argument("--name", required=True)
    create.add_argument("--user", default="default", help="owner (created if new)")
    create.add_argument("--models", help="comma-separated model allow-list")
    create.add_argument("--expires", help="ISO-8601 expiry time")
    for action in ("list", "reset", "revoke"):
        p = keys_sub.add_parser(action)
        _common(p)
        if action != "list":
            p.add_argument("name")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    return load_settings(
        args.config,
        data_dir=args.data_dir,
        database_url=args.database_url,
        host=getattr(args, "host", None),
        port=getattr(args, "port", None),
        relaxed_json=getattr(args, "relaxed_json", None),
        log_level=getattr(args, "log_level", None),
    )


def _serve(settings: Settings) -> int:
    import uvicorn

    from llmrelay.app import build_app

    logs.configure(settings.log_level)
    config = uvicorn.Config(
        build_app(settings),
        host=settings.host,
        port=settings.port,
        loop=settings.event_loop,
        http=settings.http_parser,
        log_level=settings.log_level.lower(),
        access_log=settings.access_log,
        timeout_graceful_shutdown=5,
        log_config=None,  # uvicorn's loggers propagate to the JSON handler
    )
    uvicorn.Server(config).run()
    return 0


def _run_keys(args: argparse.Namespace, settings: Settings) -> int:
    from llmrelay.store.db import Database, migrate
    from llmrelay.store.keys import KeyError_, KeyStore

    migrate(settings.resolved_database_url)

    async def run(op: Callable[[KeyStore], Awaitable[Any]]) -> Any:
        db = Database(settings.resolved_database_url)
        try:
            return await op(KeyStore(db))
        finally:
            await db.close()

    try:
        if args.action == "create":
            models = (
                [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
            )
            expires = datetime.fromisoformat(args.expires) if args.expires else None
            secret = asyncio.run(
                run(
                    lambda ks: ks.create(
                        args.name, user=args.user, models=models, expires_at=expires
                    )
                )
            )
            print(f"created key {args.name!r}; the secret is shown only once:")
            print(secret)
        elif args.action == "list":
            records = asyncio.run(run(lambda ks: ks.list()))
            print(f"{'NAME':<20} {'PREFIX':<12} {'USER':<12} {'STATUS':<8} {'MODELS':<24} CREATED")
            for r in records:
                status = "active" if r.usable() else ("revoked" if r.revoked_at else "expired")
                allowed = ",".join(r.models) if r.models is not None else "*"
                print(
                    f"{r.name:<20} {r.prefix:<12} {r.user:<12} {status:<8} {allowed:<24} "
                    f"{r.created_at:%Y-%m-%d %H:%M}"
                )
        elif args.action == "reset":
            secret = asyncio.run(run(lambda ks: ks.reset(args.name)))
            print(f"reset key {args.name!r}; the old secret no longer works. New secret:")
            print(secret)
        elif args.action == "revoke":
            asyncio.run(run(lambda ks: ks.revoke(args.name)))
            print(f"revoked key {args.name!r}")
    except KeyError_ as exc:
        print(f"llmrelay: {exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = _settings(args)
    except Exception as exc:
        print(f"llmrelay: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return _serve(settings)
    return _run_keys(args, settings)
