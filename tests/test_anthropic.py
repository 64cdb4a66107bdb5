"""The anthropic provider type against a local server speaking Anthropic's Messages API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from tests.anthropic_upstream import FakeAnthropic
from tests.conftest import Server, chat, sse_events, start_server, stop_server
from tests.schemas import check_completion, check_error

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5"
    "ErkJggg=="
)


@pytest.fixture(scope="module")
def claude() -> FakeAnthropic:
    return FakeAnthropic().start()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, claude: FakeAnthropic) -> Iterator[Server]:
    def channel(name: str, key: str, models: list[str], **extra: Any) -> dict[str, Any]:
        return {
            "name": name,
            "type": "anthropic",
            "base_url": claude.url,
            "keys": [key],
            "models": models,
            **extra,
        }

    channels = [
        channel("c-text", "text", ["claude-text"], map={"claude-text": "claude-sonnet-4-5"}),
        channel("c-tool", "tool", ["claude-tool"]),
        channel("c-think", "think", ["claude-think"]),
        channel("c-max", "max", ["claude-max"]),
        channel("c-invalid", "invalid", ["claude-invalid"]),
        channel("c-cut", "cut", ["claude-cut"]),
        channel("c-busy", "overloaded", ["claude-failover"], priority=1),
        channel("c-backup", "text", ["claude-failover"]),
    ]
    srv = start_server(tmp_path_factory.mktemp("anthropic"), extra_config={"channels": channels})
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def http(relay: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=relay.url, timeout=60, headers={"Authorization": f"Bearer {relay.admin_key}"}
    ) as client:
        yield client


def ok(http: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    check_completion(response.json())
    return response.json()


def test_text_answer_and_the_request_sent(http: httpx.Client, claude: FakeAnthropic) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "developer", "content": "Answer in English."},
        {"role": "user", "content": "Hi"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "Look:"},
                {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
                {"type": "image_url", "image_url": {"url": "https://example.com/cat.png"}},
            ],
        },
    ]
    result = ok(
        http,
        chat(
            messages,
            model="claude-text",
            max_tokens=50,
            temperature=0.5,
            top_p=0.9,
            top_k=20,
            stop=["END"],
            user="u-1",
        ),
    )
    choice = result["choices"][0]
    assert choice["message"]["content"] == "Hello!" and choice["finish_reason"] == "stop"
    assert result["usage"] == {
        "prompt_tokens": 30,
        "completion_tokens": 15,
        "total_tokens": 45,
        "prompt_tokens_details": {"cached_tokens": 5},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    headers, body = claude.last("text")
    assert headers["anthropic-version"] == "2023-06-01" and "authorization" not in headers
    assert body == {
        "model": "claude-sonnet-4-5",
        "max_tokens": 50,
        "stream": True,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "Hi"},
                    {"type": "text", "text": "Look:"},
                    {
                        "type": "image",
                        "source": {"type": "base64", "media_type": "image/png", "data": PNG},
                    },
                    {
                        "type": "image",
                        "source": {"type": "url", "url": "https://example.com/cat.png"},
                    },
                ],
            }
        ],
        "temperature": 0.5,
        "top_p": 0.9,
        "top_k": 20,
        "stop_sequences": ["END"],
        "metadata": {"user_id": "u-1"},
    }


def test_streamed_text(http: httpx.Client) -> None:
    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=chat("Hi", model="claude-text", stream=True, stream_options={"include_usage": True}),
    ) as r:
        events = sse_events(r)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == "Hello!"
    assert events[-1]["usage"]["completion_tokens"] == 15


def test_tool_round_trip(http: httpx.Client, claude: FakeAnthropic) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "description": "Weather",
            "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
        },
    }
    result = ok(
        http,
        chat(
            "Weather in SF?",
            model="claude-tool",
            tools=[tool],
            tool_choice="required",
            parallel_tool_calls=False,
        ),
    )
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Okay, let me check."
    call = choice["message"]["tool_calls"][0]
    assert call["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert json.loads(call["function"]["arguments"]) == {"location": "San Francisco, CA"}
    _, body = claude.last("tool")
    assert body["tools"] == [
        {
            "name": "get_weather",
            "description": "Weather",
            "input_schema": tool["function"]["parameters"],
        }
    ]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}

    history = [
        {"role": "user", "content": "Weather in SF?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": call["id"], "content": "18C"},
    ]
    ok(
        http,
        chat(
            history,
            model="claude-tool",
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        ),
    )
    _, body = claude.last("tool")
    assert body["messages"][1] == {
        "role": "assistant",
        "content": [
            {
                "type": "tool_use",
                "id": call["id"],
                "name": "get_weather",
                "input": {"location": "San Francisco, CA"},
            }
        ],
    }
    assert body["messages"][2] == {
        "role": "user",
        "content": [{"type": "tool_result", "tool_use_id": call["id"], "content": "18C"}],
    }
    assert body["tool_choice"] == {"type": "tool", "name": "get_weather"}

    with http.stream(
        "POST",
        "/v1/chat/completions",
        json=chat("Weather?", model="claude-tool", tools=[tool], stream=True),
    ) as r:
        events = sse_events(r)
    deltas = [d for e in events for d in e["choices"][0]["delta"].get("tool_calls") or []]
    assert deltas[0]["id"] == "toolu_01T1x1fJ34qAmk2tNTrN7Up6"
    assert deltas[0]["function"]["name"] == "get_weather"
    pieces = [d["function"]["arguments"] for d in deltas if d["function"].get("arguments")]
    assert pieces == ['{"location":', ' "San Fra', 'ncisco, CA"}']  # as they arrived


def test_thinking(http: httpx.Client, claude: FakeAnthropic) -> None:
    result = ok(
        http, chat("What is 6x7?", model="claude-think", reasoning_effort="high", max_tokens=20000)
    )
    message = result["choices"][0]["message"]
    assert message["reasoning_content"] == "Let me solve this step by step."
    assert message["content"] == "The answer is 42."
    _, body = claude.last("think")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 16000}
    ok(http, chat("Hi", model="claude-think", enable_thinking=True))
    _, body = claude.last("think")
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 4096}
    assert body["max_tokens"] > 4096
    inline = ok(
        http, chat("Hi", model="claude-think", enable_thinking=True, separate_reasoning=False)
    )
    assert inline["choices"][0]["message"]["content"].startswith("<think>Let me solve")


def test_stop_reasons(http: httpx.Client) -> None:
    assert ok(http, chat("Hi", model="claude-max"))["choices"][0]["finish_reason"] == "length"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"temperature": 1.5}, "temperature"),
        ({"n": 2}, "n"),
        ({"logprobs": True}, "logprobs"),
        ({"seed": 1}, "seed"),
        ({"frequency_penalty": 0.5}, "frequency_penalty"),
        ({"response_format": {"type": "json_object"}}, "response_format"),
        ({"enable_thinking": True, "max_tokens": 100}, "max_tokens"),
        ({"enable_thinking": True, "temperature": 0.5}, "temperature"),
    ],
)
def test_what_anthropic_cannot_honour_is_a_400(
    http: httpx.Client, params: dict[str, Any], param: str
) -> None:
    response = http.post("/v1/chat/completions", json=chat("Hi", model="claude-text", **params))
    assert response.status_code == 400, response.text
    assert check_error(response.json())["param"] == param


def test_upstream_errors(http: httpx.Client) -> None:
    invalid = http.post("/v1/chat/completions", json=chat("Hi", model="claude-invalid"))
    assert invalid.status_code == 400
    assert "roles must alternate" in check_error(invalid.json())["message"]
    with http.stream(
        "POST", "/v1/chat/completions", json=chat("Hi", model="claude-cut", stream=True)
    ) as r:
        events = sse_events(r)
    assert "error" in events[-1] and "Overloaded" in events[-1]["error"]["message"]
    # 529 overloaded on the first channel: the request moves to the next one.
    assert (
        ok(http, chat("Hi", model="claude-failover"))["choices"][0]["message"]["content"]
        == "Hello!"
    )
