"""Channel administration shared by the JSON admin API and the web console.

Channels from the config file can be looked at and tested but not changed here; those in the
database can be added, changed, enabled, disabled and removed. Every change rebuilds this
server's routes at once; other servers sharing the database pick it up within
``channel_refresh_seconds``. Failures are :mod:`llmrelay.errors` errors with a message in words.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import ValidationError

from llmrelay.errors import Conflict, InvalidRequest, NotFound
from llmrelay.routing.channels import ChannelManager
from llmrelay.routing.probe import ProbeResult, probe
from llmrelay.settings import ChannelConfig
from llmrelay.store.channels import ChannelError, to_json

Source = Literal["config", "db"]


def validate(data: Any) -> ChannelConfig:
    """A channel from its JSON fields; the first problem becomes a 400 naming the field."""
    try:
        return ChannelConfig.model_validate(data)
    except ValidationError as exc:
        first = exc.errors()[0]
        param = ".".join(str(p) for p in first["loc"]) or None
        message = str(first["msg"]).removeprefix("Value error, ")
        raise InvalidRequest(
            f"Invalid channel: {param}: {message}", param=param, code="invalid_value"
        ) from None


async def find(manager: ChannelManager, name: str) -> tuple[ChannelConfig, Source]:
    """The channel ``name`` and where it is defined (the config file wins over the database)."""
    for config in manager.settings.channels:
        if config.name == name:
            return config, "config"
    try:
        return await manager.store.get(name), "db"
    except ChannelError:
        raise NotFound(f"No channel named '{name}'.", param="name") from None


async def listing(manager: ChannelManager) -> list[tuple[ChannelConfig, Source]]:
    """Every channel: the config file's first, then the database's in the order added."""
    stored = await manager.store.list()
    return [
        *((c, "config") for c in manager.settings.channels),
        *((c, "db") for c in stored),
    ]


async def add(manager: ChannelManager, data: Any) -> ChannelConfig:
    config = validate(data)
    if any(c.name == config.name for c in manager.settings.channels):
        raise Conflict(f"A channel named '{config.name}' exists in the config file.")
    try:
        await manager.store.add(config)
    except ChannelError as exc:
        raise Conflict(str(exc)) from None
    await manager.refresh()
    return config


async def update(manager: ChannelManager, name: str, changes: dict[str, Any]) -> ChannelConfig:
    """Change some fields of a database channel; fields left out keep their values."""
    config, source = await find(manager, name)
    if source == "config":
        raise Conflict("This channel is defined in the config file; edit it there.")
    if changes.get("name", config.name) != config.name:
        raise InvalidRequest("A channel cannot be renamed.", param="name")
    updated = validate({**to_json(config), **changes})
    try:
        await manager.store.update(updated)
    except ChannelError:  # removed meanwhile
        raise NotFound(f"No channel named '{name}'.", param="name") from None
    await manager.refresh()
    return updated


async def remove(manager: ChannelManager, name: str) -> None:
    _, source = await find(manager, name)
    if source == "config":
        raise Conflict("This channel is defined in the config file; remove it there.")
    try:
        await manager.store.remove(name)
    except ChannelError:
        raise NotFound(f"No channel named '{name}'.", param="name") from None
    await manager.refresh()


async def run_test(manager: ChannelManager, name: str) -> ProbeResult:
    """A real round trip to the channel's first model (see :func:`routing.probe.probe`)."""
    config, _ = await find(manager, name)
    return await probe(config, manager.pool, manager.estimate)
