"""``llmrelay prices``: set, list, remove model prices (USD per million tokens)."""

from __future__ import annotations

import argparse
import sys

from llmrelay.accounting.money import Money, format_usd, price_text
from llmrelay.cli.common import add_common, price_arg, print_table, usd_arg, with_database
from llmrelay.settings import Settings
from llmrelay.store.prices import PriceError, PriceRecord, PriceStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    prices = sub.add_parser("prices", help="manage model prices")
    actions = prices.add_subparsers(dest="action", required=True)
    put = actions.add_parser("set", help="set a model's prices (USD per million tokens)")
    add_common(put)
    put.add_argument("model")
    put.add_argument("--input", type=price_arg, required=True, help="USD per 1M input tokens")
    put.add_argument("--output", type=price_arg, required=True, help="USD per 1M output tokens")
    put.add_argument("--cached-input", type=price_arg, help="USD per 1M (default: --input)")
    put.add_argument("--reasoning", type=price_arg, help="USD per 1M (default: --output)")
    put.add_argument("--per-search", type=usd_arg, default=0, help="USD per web-search call")
    add_common(actions.add_parser("list", help="list prices"))
    remove = actions.add_parser("remove", help="remove a model's prices")
    add_common(remove)
    remove.add_argument("model")


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        return with_database(settings, lambda db: _run(args, PriceStore(db)))
    except PriceError as exc:
        print(f"llmrelay: {exc}", file=sys.stderr)
        return 1


def _per_million(value: Money) -> str:
    return "$" + price_text(value)


def _list(prices: list[PriceRecord]) -> None:
    print("prices in USD per million tokens; web search per call")
    print_table(
        ("MODEL", "INPUT", "CACHED INPUT", "OUTPUT", "REASONING", "PER SEARCH", "UPDATED"),
        (
            (
                p.model,
                _per_million(p.input_pusd),
                _per_million(p.cached_input),
                _per_million(p.output_pusd),
                _per_million(p.reasoning),
                format_usd(p.per_search_pusd),
                f"{p.updated_at:%Y-%m-%d %H:%M}" if p.updated_at else None,
            )
            for p in prices
        ),
    )


async def _run(args: argparse.Namespace, store: PriceStore) -> int:
    if args.action == "set":
        price = await store.set(
            PriceRecord(
                model=args.model,
                input_pusd=args.input,
                output_pusd=args.output,
                cached_input_pusd=args.cached_input,
                reasoning_pusd=args.reasoning,
                per_search_pusd=args.per_search,
            )
        )
        _list([price])
    elif args.action == "list":
        _list(await store.list())
    else:
        await store.delete(args.model)
        print(f"removed the prices of {args.model!r}")
    return 0
