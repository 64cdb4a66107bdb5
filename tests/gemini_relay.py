"""A llmrelay server with gemini channels in front of :class:`FakeGemini`, for the gemini tests.

Import the fixtures into a test module to use them (each module gets its own server).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, admin_client, start_server, stop_server
from tests.gemini_upstream import IMAGE_HOST, FakeGemini

FAILING = ("bad-key", "denied", "quota", "internal", "overloaded", "invalid", "cut", "midstream")
MISC = ["gemini-image", "gemini-logprobs", "gemini-blocked", "gemini-max", "gemini-safety"]
MISC += ["gemini-grounded", "gemini-recitation", "gemini-malformed"]
TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"location": {"type": "string"}},
            "required": ["location"],
            "additionalProperties": False,
        },
    },
}


@pytest.fixture(scope="module")
def gemini() -> FakeGemini:
    return FakeGemini().start()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, gemini: FakeGemini) -> Iterator[Server]:
    def channel(name: str, key: str, models: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "type": "gemini",
            "base_url": gemini.url,
            "keys": [key],
            "models": models,
            **extra,
        }

    channels = [
        channel("g-text", "k1", ["gemini-text", "g-flash"], map={"g-flash": "gemini-2.5-flash"}),
        channel(
            "g-v1beta",
            "k2",
            ["g-flash-b"],
            base_url=gemini.url + "/v1beta/",
            map={"g-flash-b": "models/gemini-2.5-flash"},
        ),
        channel("g-tool", "k1", ["gemini-tool", "gemini-3-pro-preview"]),
        channel("g-think", "k1", ["gemini-think", "gemini-3-flash-preview"]),
        channel("g-misc", "k1", MISC),
        channel(
            "g-video",
            "k4",
            ["g-video"],
            map={"g-video": "gemini-text"},
            capabilities={"video": True},
        ),
        *[
            channel(f"g-{key}", key, [f"fail-{key}"], map={f"fail-{key}": "gemini-text"})
            for key in FAILING
        ],
        channel(
            "g-limited", "quota", ["g-failover"], priority=1, map={"g-failover": "gemini-text"}
        ),
        channel(
            "g-badkey", "bad-key", ["g-failover"], priority=1, map={"g-failover": "gemini-text"}
        ),
        channel("g-backup", "k3", ["g-failover"], map={"g-failover": "gemini-text"}),
    ]
    config = {"channels": channels, "media_fetch_allow": [f"{IMAGE_HOST}/32"]}
    srv = start_server(tmp_path_factory.mktemp("gemini"), extra_config=config)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def http(relay: Server) -> Iterator[httpx.Client]:
    with admin_client(relay, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def client(relay: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.url + "/v1", api_key=relay.admin_key, max_retries=0)


def deltas(events: list[dict[str, Any]], field: str, index: int = 0) -> list[Any]:
    return [
        c["delta"][field]
        for e in events
        for c in e.get("choices", [])
        if c["index"] == index and c["delta"].get(field) is not None
    ]


def sent(gemini: FakeGemini, model: str) -> dict[str, Any]:
    return gemini.last(model).body
