"""``llmrelay channels``: add, list, test, enable, disable, remove upstream channels."""

from __future__ import annotations

import argparse
import sys
from typing import get_args

from pydantic import SecretStr, ValidationError

from llmrelay.accounting.tokens import TokenEstimator
from llmrelay.cli.common import add_common, with_database
from llmrelay.providers.http import HTTPPool
from llmrelay.routing.probe import probe
from llmrelay.settings import CapabilityOverrides, ChannelConfig, Flavor, Settings
from llmrelay.store.channels import ChannelError, ChannelStore

_OVERRIDES = ("vision", "video", "audio", "tools", "json_schema", "logprobs", "reasoning")


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    channels = sub.add_parser("channels", help="manage upstream channels")
    actions = channels.add_subparsers(dest="action", required=True)
    add = actions.add_parser("add", help="add a channel")
    add_common(add)
    add.add_argument("name")
    add.add_argument("--type", default="openai", choices=["openai", "gemini", "anthropic"])
    add.add_argument(
        "--flavor",
        default="relay",
        choices=list(get_args(Flavor)),
        help="which kind of OpenAI-compatible server (see docs/providers.md)",
    )
    add.add_argument("--base-url", required=True, help="e.g. https://api.openai.com/v1")
    add.add_argument("--key", action="append", default=[], help="upstream key (repeatable)")
    add.add_argument("--models", required=True, help="comma-separated public model names")
    add.add_argument("--map", action="append", default=[], metavar="PUBLIC=UPSTREAM")
    add.add_argument("--priority", type=int, default=0)
    add.add_argument("--weight", type=int, default=1)
    add.add_argument("--connect-timeout", type=float, default=5.0)
    add.add_argument("--first-byte-timeout", type=float, default=60.0)
    add.add_argument("--idle-timeout", type=float, default=60.0)
    add.add_argument("--context-length", type=int)
    for name in _OVERRIDES:
        add.add_argument(
            f"--{name.replace('_', '-')}",
            action=argparse.BooleanOptionalAction,
            default=None,
            help=f"override whether its models support {name}",
        )
    for action in ("list", "test", "enable", "disable", "remove"):
        p = actions.add_parser(action)
        add_common(p)
        if action != "list":
            p.add_argument("name")


def _config(args: argparse.Namespace) -> ChannelConfig:
    mapping = {}
    for item in args.map:
        public, sep, upstream = item.partition("=")
        if not sep or not public or not upstream:
            raise ValueError(f"--map {item!r}: expected PUBLIC=UPSTREAM")
        mapping[public] = upstream
    overrides = {name: getattr(args, name) for name in _OVERRIDES}
    return ChannelConfig(
        name=args.name,
        type=args.type,
        flavor=args.flavor,
        base_url=args.base_url,
        keys=[SecretStr(k) for k in args.key],
        models=[m.strip() for m in args.models.split(",") if m.strip()],
        map=mapping,
        priority=args.priority,
        weight=args.weight,
        connect_timeout=args.connect_timeout,
        first_byte_timeout=args.first_byte_timeout,
        idle_timeout=args.idle_timeout,
        capabilities=CapabilityOverrides(**overrides, context_length=args.context_length),
    )


def run(args: argparse.Namespace, settings: Settings) -> int:
    try:
        if args.action == "add":
            config = _config(args)
            with_database(settings, lambda db: ChannelStore(db).add(config))
            print(f"added channel {config.name!r} ({len(config.models)} models)")
            return 0
        return with_database(settings, lambda db: _run(args, settings, ChannelStore(db)))
    except (ChannelError, ValueError, ValidationError) as exc:
        print(f"llmrelay: {exc}", file=sys.stderr)
        return 1


async def _find(settings: Settings, store: ChannelStore, name: str) -> tuple[ChannelConfig, bool]:
    for config in settings.channels:
        if config.name == name:
            return config, True
    return await store.get(name), False


async def _run(args: argparse.Namespace, settings: Settings, store: ChannelStore) -> int:
    if args.action == "list":
        stored = await store.list()
        print(
            f"{'NAME':<16} {'TYPE':<8} {'FLAVOR':<9} {'PRIO':>4} {'WEIGHT':>6} {'KEYS':>4} "
            f"{'STATE':<8} {'SOURCE':<6} {'BASE URL':<32} MODELS"
        )
        for config, source in [
            *((c, "config") for c in settings.channels),
            *((c, "db") for c in stored),
        ]:
            state = "enabled" if config.enabled else "disabled"
            print(
                f"{config.name:<16} {config.type:<8} {config.flavor:<9} {config.priority:>4} "
                f"{config.weight:>6} {len(config.keys):>4} {state:<8} {source:<6} "
                f"{config.base_url:<32} {','.join(config.models)}"
            )
        return 0
    config, from_file = await _find(settings, store, args.name)
    if args.action == "test":
        return await _test(config)
    if from_file:
        print(
            f"llmrelay: channel {args.name!r} is defined in the config file; edit it there",
            file=sys.stderr,
        )
        return 1
    if args.action == "remove":
        await store.remove(args.name)
        print(f"removed channel {args.name!r}")
    else:
        await store.update(config.model_copy(update={"enabled": args.action == "enable"}))
        print(f"{args.action}d channel {args.name!r}")
    return 0


async def _test(config: ChannelConfig) -> int:
    """A real round trip to the channel's first model; reports latency and capabilities."""
    estimator = TokenEstimator()
    try:
        pool = HTTPPool()
        try:
            result = await probe(config, pool, estimator)
        finally:
            await pool.close()
    finally:
        estimator.close()
    if not result.ok:
        print(f"channel {config.name!r}: FAILED: {result.error}")
        return 1
    print(f"channel {config.name!r}: OK  model {result.model} -> {result.upstream_model}")
    print(f"  first chunk {result.first_chunk_ms:.0f} ms, complete {result.total_ms:.0f} ms")
    print(f"  answer: {result.answer[:60]!r}")
    if result.usage is not None:
        kind = "estimated" if result.usage["estimated"] else "reported by the upstream"
        print(
            f"  usage {result.usage['prompt_tokens']}+{result.usage['completion_tokens']} "
            f"tokens ({kind})"
        )
    supports = result.supports
    print(
        f"  supports: input {', '.join(supports['input_modalities'])}; tools "
        f"{supports['tools']}; json_schema {supports['json_schema']}; logprobs "
        f"{supports['logprobs']}; reasoning {supports['reasoning']}; parameters "
        f"{', '.join(supports['parameters'])}"
    )
    return 0
