"""The console's channel form: its fields to the channel JSON of the admin API, and back.

Checking the result is ``routing.manage``'s job (the same checks as ``/admin/channels``); here
only the text shapes of the form are read: keys one per line, models separated by commas or
lines, mappings as ``public=upstream`` lines, capability overrides as default/yes/no.
"""

from __future__ import annotations

import re
from typing import Any, get_args

from llmrelay.errors import InvalidRequest
from llmrelay.settings import CapabilityOverrides, ChannelConfig, Flavor

TYPES: tuple[str, ...] = get_args(ChannelConfig.model_fields["type"].annotation)
FLAVORS: tuple[str, ...] = get_args(Flavor)
# Overrides of the provider's capability profile offered as default/yes/no.
SWITCHES = {
    "vision": "Images in",
    "video": "Video in",
    "audio": "Audio in",
    "tools": "Tools",
    "json_schema": "JSON schema",
    "logprobs": "Log probabilities",
    "reasoning": "Reasoning",
}
NUMBERS = {"context_length": "Context length", "max_n": "Most choices (n)"}
PLAIN = ("priority", "weight", "connect_timeout", "first_byte_timeout", "idle_timeout")
LABELS = {
    "name": "Name",
    "type": "Type",
    "flavor": "Flavor",
    "base_url": "Base URL",
    "keys": "Upstream keys",
    "models": "Models",
    "map": "Model mapping",
    "priority": "Priority",
    "weight": "Weight",
    "connect_timeout": "Connect timeout",
    "first_byte_timeout": "First byte timeout",
    "idle_timeout": "Idle timeout",
    **{f"capabilities.{k}": v for k, v in (SWITCHES | NUMBERS).items()},
}


def _lines(text: str) -> list[str]:
    return [line.strip() for line in text.splitlines() if line.strip()]


def _mapping(text: str) -> dict[str, str]:
    mapping: dict[str, str] = {}
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        public, sep, upstream = (part.strip() for part in line.partition("="))
        if not sep or not public or not upstream:
            raise InvalidRequest(
                f"Model mapping, line {number}: write public=upstream, not “{line.strip()}”.",
                param="map",
            )
        mapping[public] = upstream
    return mapping


def _capabilities(form: dict[str, str], current: CapabilityOverrides) -> dict[str, Any]:
    """The overrides in the form over the current ones (fields the form lacks are kept)."""
    caps = current.model_dump(mode="json")
    for name in SWITCHES:
        choice = form.get(f"cap_{name}", "")
        caps[name] = {"yes": True, "no": False}.get(choice)
    for name in NUMBERS:
        caps[name] = form.get(f"cap_{name}", "").strip() or None
    return caps


def to_channel(form: dict[str, str], current: ChannelConfig | None = None) -> dict[str, Any]:
    """The channel JSON for the add form, or the changes for the edit form of ``current``.

    On edit an empty keys field keeps the stored keys unless "remove the keys" is ticked.
    """
    base_url = form.get("base_url", "").strip()
    if not base_url.startswith(("http://", "https://")):
        raise InvalidRequest(
            "Base URL: enter the upstream's address, e.g. https://api.openai.com/v1.",
            param="base_url",
        )
    models = [m.strip() for m in re.split(r"[,\n]", form.get("models", "")) if m.strip()]
    if not models:
        raise InvalidRequest("Models: name at least one model the channel serves.", param="models")
    data: dict[str, Any] = {
        "type": form.get("type", "openai"),
        "flavor": form.get("flavor", "relay"),
        "base_url": base_url,
        "models": models,
        "map": _mapping(form.get("map", "")),
        "capabilities": _capabilities(
            form, current.capabilities if current else CapabilityOverrides()
        ),
    }
    for name in PLAIN:
        text = form.get(name, "").strip()
        if text:
            data[name] = text  # pydantic checks and converts numbers given as text
    keys = _lines(form.get("keys", ""))
    if current is None:
        data["name"] = form.get("name", "").strip()
        data["keys"] = keys
        data["enabled"] = form.get("enabled") == "on"
    elif keys or form.get("clear_keys") == "on":
        data["keys"] = keys
    return data


def to_form(config: ChannelConfig) -> dict[str, str]:
    """The edit form's fields for a stored channel; the keys field starts empty."""
    caps = config.capabilities
    form = {
        "name": config.name,
        "type": config.type,
        "flavor": config.flavor,
        "base_url": config.base_url,
        "keys": "",
        "models": ", ".join(config.models),
        "map": "\n".join(f"{k}={v}" for k, v in config.map.items()),
        **{name: _number(getattr(config, name)) for name in PLAIN},
    }
    for name in SWITCHES:
        value = getattr(caps, name)
        form[f"cap_{name}"] = "" if value is None else ("yes" if value else "no")
    for name in NUMBERS:
        value = getattr(caps, name)
        form[f"cap_{name}"] = "" if value is None else str(value)
    return form


def _number(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else str(value)


def message(exc: InvalidRequest) -> str:
    """A validation error with the form's label for the field instead of its JSON name."""
    param = exc.param or ""
    prefix = f"Invalid channel: {param}: "
    if param == "name" and "pattern" in exc.message:
        return "Name: use only letters, digits and the characters _ . : - (no spaces)."
    if param in LABELS and exc.message.startswith(prefix):
        text = exc.message.removeprefix(prefix)
        return f"{LABELS[param]}: {text[:1].lower()}{text[1:]}".rstrip(".") + "."
    return exc.message
