"""The ``llmrelay`` command: ``serve``, ``keys``, ``users``, ``prices``, ``usage``, ``channels``."""

from __future__ import annotations

import argparse
import sys

from llmrelay import __version__
from llmrelay.cli import channels, keys, prices, serve, usage, users
from llmrelay.cli.common import settings_from


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="llmrelay", description=__doc__)
    parser.add_argument("--version", action="version", version=f"llmrelay {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    serve.add_parser(sub)
    keys.add_parser(sub)
    users.add_parser(sub)
    prices.add_parser(sub)
    usage.add_parser(sub)
    channels.add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        settings = settings_from(args)
    except Exception as exc:
        print(f"llmrelay: bad configuration: {exc}", file=sys.stderr)
        return 2
    if args.command == "serve":
        return serve.run(settings)
    if args.command == "keys":
        return keys.run(args, settings)
    if args.command == "users":
        return users.run(args, settings)
    if args.command == "prices":
        return prices.run(args, settings)
    if args.command == "usage":
        return usage.run(args, settings)
    return channels.run(args, settings)
