"""``llmrelay users``: create, list, set-balance, disable, enable, set-password, signin-link."""

from __future__ import annotations

import argparse
import getpass
import sys

from llmrelay.accounting.money import Money, format_usd
from llmrelay.cli.common import add_common, print_table, usd_arg, with_database
from llmrelay.settings import Settings
from llmrelay.store.credentials import Credentials, check_password_rules, link_url
from llmrelay.store.db import Database
from llmrelay.store.users import ROLES, UserError, UserStore

UNLIMITED = ("unlimited", "none")


def _balance_arg(text: str) -> Money | None:
    return None if text.strip().lower() in UNLIMITED else usd_arg(text)


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    users = sub.add_parser("users", help="manage users")
    actions = users.add_subparsers(dest="action", required=True)
    create = actions.add_parser("create", help="create a user")
    add_common(create)
    create.add_argument("name")
    create.add_argument("--role", default="user", choices=ROLES)
    create.add_argument(
        "--balance", type=usd_arg, help="prepaid balance in USD (default: unlimited)"
    )
    add_common(actions.add_parser("list", help="list users with balances and spend"))
    balance = actions.add_parser("set-balance", help="set the remaining balance")
    add_common(balance)
    balance.add_argument("name")
    balance.add_argument("usd", type=_balance_arg, help="amount in USD, or 'unlimited'")
    for action in ("disable", "enable"):
        p = actions.add_parser(action, help=f"{action} a user and so all of their keys")
        add_common(p)
        p.add_argument("name")
    password = actions.add_parser(
        "set-password", help="set a user's console password (ends their console sessions)"
    )
    add_common(password)
    password.add_argument("name")
    password.add_argument(
        "--password-stdin", action="store_true", help="read the password from stdin's first line"
    )
    link = actions.add_parser(
        "signin-link", help="print a one-time console sign-in link (24 hours, works once)"
    )
    add_common(link)
    link.add_argument("name")
    link.add_argument(
        "--base-url",
        default="http://127.0.0.1:8080",
        help="where users reach the server (default: http://127.0.0.1:8080)",
    )


def _read_password(args: argparse.Namespace) -> str:
    """From stdin's first line, or asked twice on the terminal; checked before any database
    work, so a bad one changes nothing."""
    if args.password_stdin:
        password = sys.stdin.readline().rstrip("\r\n")
    elif not sys.stdin.isatty():
        raise UserError("stdin is not a terminal: pass the password with --password-stdin")
    else:
        password = getpass.getpass(f"New console password for {args.name}: ")
        if getpass.getpass("Again: ") != password:
            raise UserError("the two passwords differ")
    check_password_rules(password)
    return password


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.action in ("set-password", "signin-link"):
            password = _read_password(args) if args.action == "set-password" else ""
            return with_database(settings, lambda db: _sign_in(args, db, password))
        return with_database(settings, lambda db: _run(args, UserStore(db)))
    except UserError as exc:
        print(f"llmrelay: {exc}", file=sys.stderr)
        return 1


def _balance(value: Money | None) -> str:
    return "unlimited" if value is None else format_usd(value)


async def _sign_in(args: argparse.Namespace, db: Database, password: str) -> int:
    credentials = Credentials(db)
    if args.action == "set-password":
        await credentials.set_password(args.name, password)
        print(f"user {args.name!r}: password set; their console sessions are signed out")
        return 0
    if not (await UserStore(db).get(args.name)).enabled:
        raise UserError(f"user {args.name!r} is disabled; enable them first")
    token, expires = await credentials.new_signin_link(args.name)
    until = f"{expires:%Y-%m-%d %H:%M} UTC"
    print(f"One-time sign-in link for {args.name!r}, valid once until {until}:", file=sys.stderr)
    print(link_url(args.base_url, token))
    return 0


async def _run(args: argparse.Namespace, store: UserStore) -> int:
    if args.action == "create":
        await store.create(args.name, role=args.role, balance=args.balance)
        print(f"created user {args.name!r} ({args.role}, balance {_balance(args.balance)})")
    elif args.action == "list":
        print_table(
            ("NAME", "ROLE", "STATUS", "BALANCE", "SPENT", "KEYS", "CREATED"),
            (
                (
                    u.name,
                    u.role,
                    "active" if u.enabled else "disabled",
                    _balance(u.balance_pusd),
                    format_usd(u.spent_pusd),
                    u.keys,
                    f"{u.created_at:%Y-%m-%d %H:%M}",
                )
                for u in await store.list()
            ),
        )
    elif args.action == "set-balance":
        await store.set_balance(args.name, args.usd)
        print(f"user {args.name!r}: balance {_balance(args.usd)}")
    else:
        await (store.disable if args.action == "disable" else store.enable)(args.name)
        print(f"{args.action}d user {args.name!r}")
    return 0
