"""``llmrelay usage``: requests, tokens and cost per key, user, model or day."""

from __future__ import annotations

import argparse
import sys
from datetime import date

from llmrelay.accounting.money import format_usd
from llmrelay.cli.common import add_common, print_table, with_database
from llmrelay.settings import Settings
from llmrelay.store.usage import BY, UsageRow, UsageStore, total


def _date(text: str) -> date:
    try:
        return date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a date (YYYY-MM-DD)") from None


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    usage = sub.add_parser("usage", help="usage report: requests, tokens, cost")
    add_common(usage)
    usage.add_argument("--by", choices=BY, default="model", help="group by (default: model)")
    usage.add_argument("--since", type=_date, help="first UTC day, YYYY-MM-DD (inclusive)")
    usage.add_argument("--until", type=_date, help="last UTC day, YYYY-MM-DD (inclusive)")


def run(args: argparse.Namespace, settings: Settings) -> int:
    if args.since and args.until and args.since > args.until:
        print("llmrelay: --since is after --until", file=sys.stderr)
        return 1
    rows = with_database(settings, lambda db: UsageStore(db).usage(args.by, args.since, args.until))
    print_table(
        (args.by.upper(), *_HEADERS),
        (_cells(row) for row in [*rows, total(rows, "TOTAL")]),
    )
    return 0


_HEADERS = (
    "REQUESTS",
    "ERRORS",
    "PROMPT",
    "CACHED",
    "COMPLETION",
    "REASONING",
    "SEARCHES",
    "COST",
)


def _cells(row: UsageRow) -> tuple[object, ...]:
    return (
        row.group,
        row.requests,
        row.errors,
        row.prompt_tokens,
        row.cached_tokens,
        row.completion_tokens,
        row.reasoning_tokens,
        row.search_calls,
        format_usd(row.cost_pusd),
    )
