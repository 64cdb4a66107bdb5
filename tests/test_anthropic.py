"""The anthropic provider type against a local server speaking Anthropic's Messages API."""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pydantic
import pytest
from openai.types.chat import ChatCompletion

from llmrelay.providers.anthropic_json import ANSWER_DESCRIPTION
from tests.anthropic_upstream import REDACTED, SIGNATURE, THOUGHTS, TOOL_ID, FakeAnthropic
from tests.conftest import (
    Server,
    admin_client,
    chat,
    ok,
    sse_events,
    start_server,
    stop_server,
    stream_events,
)
from tests.schemas import check_error

PNG = (
    "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR4nGNgYGD4DwABBAEAwS2OUAAAAABJRU5"
    "ErkJggg=="
)
WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather",
        "parameters": {"type": "object", "properties": {"location": {"type": "string"}}},
    },
}
SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string"}, "age": {"type": "integer"}},
    "required": ["name", "age"],
    "additionalProperties": False,
}
ANSWER = '{"name": "Ada", "age": 36}'
CLAUDE = "anthropic-claude-v1"


def json_schema(*, strict: bool = True, schema: Any = SCHEMA) -> dict[str, Any]:
    return {
        "type": "json_schema",
        "json_schema": {"name": "person", "schema": schema, "strict": strict},
    }


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
        channel("c-loop", "loop", ["claude-loop"]),
        channel("c-json", "json", ["claude-json"]),
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
    with admin_client(relay, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def sdk(relay: Server) -> openai.OpenAI:
    return openai.OpenAI(base_url=relay.url + "/v1", api_key=relay.admin_key, max_retries=0)


def streamed(http: httpx.Client, body: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["choices"][0]["delta"] for e in stream_events(http, body) if e["choices"]]


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
        (
            {"response_format": json_schema(schema={"type": "array"})},
            "response_format.json_schema.schema",
        ),
        ({"enable_thinking": True, "tools": [WEATHER], "tool_choice": "required"}, "tool_choice"),
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


class Person(pydantic.BaseModel):
    name: str
    age: int


def test_json_schema_is_a_forced_answer_tool(
    http: httpx.Client, sdk: openai.OpenAI, claude: FakeAnthropic
) -> None:
    choice = ok(http, chat("Who?", model="claude-json", response_format=json_schema()))["choices"][
        0
    ]
    assert choice["message"]["content"] == ANSWER and choice["finish_reason"] == "stop"
    assert "tool_calls" not in choice["message"]
    _, body = claude.last("json")
    assert body["tools"] == [
        {"name": "person", "description": ANSWER_DESCRIPTION, "input_schema": SCHEMA}
    ]
    assert body["tool_choice"] == {
        "type": "tool",
        "name": "person",
        "disable_parallel_tool_use": True,
    }
    assert "system" not in body and "thinking" not in body

    deltas = streamed(http, chat("Who?", model="claude-json", response_format=json_schema()))
    assert [d["content"] for d in deltas[1:] if d.get("content")] == [
        '{"name": "Ada",',
        ' "age": 36}',
    ]
    assert not any("tool_calls" in d for d in deltas)

    completion = sdk.chat.completions.parse(
        model="claude-json", messages=[{"role": "user", "content": "Who?"}], response_format=Person
    )
    assert completion.choices[0].message.parsed == Person(name="Ada", age=36)
    assert claude.last("json")[1]["tools"][0]["name"] == "Person"


def test_json_object_and_how_the_answer_is_checked(
    http: httpx.Client, claude: FakeAnthropic
) -> None:
    result = ok(http, chat("Who?", model="claude-json", response_format={"type": "json_object"}))
    assert json.loads(result["choices"][0]["message"]["content"]) == {"name": "Ada", "age": 36}
    tool = claude.last("json")[1]["tools"][0]
    assert (tool["name"], tool["input_schema"]) == ("response", {"type": "object"})
    # An answer written as text instead passes when it is what was asked for.
    plain = ok(http, chat("plain", model="claude-json", response_format={"type": "json_object"}))
    assert plain["choices"][0]["message"]["content"] == ANSWER
    # An answer off the schema: refused when strict, passed as it is when not.
    wrong = http.post(
        "/v1/chat/completions",
        json=chat("wrong", model="claude-json", response_format=json_schema()),
    )
    assert (
        wrong.status_code == 502
        and check_error(wrong.json())["code"] == "invalid_structured_output"
    )
    loose = ok(http, chat("wrong", model="claude-json", response_format=json_schema(strict=False)))
    assert loose["choices"][0]["message"]["content"] == '{"name": 7}'


def test_json_with_thinking_asks_for_the_tool(http: httpx.Client, claude: FakeAnthropic) -> None:
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Who?"}]
    params = {"model": "claude-json", "response_format": json_schema(), "reasoning_effort": "low"}
    message = ok(http, chat(messages, **params))["choices"][0]["message"]
    assert message["content"] == ANSWER  # the text written before the tool call is dropped
    assert message["reasoning_content"] == THOUGHTS[0]
    _, body = claude.last("json")
    assert body["tool_choice"] == {"type": "auto"}  # Anthropic refuses a forced tool with thinking
    assert body["thinking"] == {"type": "enabled", "budget_tokens": 1024}
    assert body["system"] == (
        "Be brief.\n\nGive your final answer by calling the tool `person`; do not write it as text."
    )
    deltas = streamed(http, chat(messages, **params))
    assert "".join(d.get("content") or "" for d in deltas) == ANSWER


def test_json_with_the_clients_own_tools(http: httpx.Client, claude: FakeAnthropic) -> None:
    params = {"model": "claude-json", "response_format": json_schema(), "tools": [WEATHER]}
    called = ok(http, chat("weather in Paris?", **params))["choices"][0]
    assert called["finish_reason"] == "tool_calls"
    assert called["message"]["tool_calls"][0]["function"]["name"] == "get_weather"
    _, body = claude.last("json")
    assert [t["name"] for t in body["tools"]] == ["get_weather", "person"]
    assert body["tool_choice"] == {"type": "any"}  # a tool of the client's, or the answer
    answered = ok(http, chat("Who?", **params))["choices"][0]
    assert answered["message"]["content"] == ANSWER and answered["finish_reason"] == "stop"
    ok(http, chat("weather?", **params, tool_choice="required", parallel_tool_calls=False))
    _, body = claude.last("json")  # this turn must call the client's tools: no answer tool
    assert [t["name"] for t in body["tools"]] == ["get_weather"]
    assert body["tool_choice"] == {"type": "any", "disable_parallel_tool_use": True}


LOOP = {"model": "claude-loop", "tools": [WEATHER], "reasoning_effort": "low"}
SIGNED = {"type": "thinking", "thinking": "".join(THOUGHTS), "signature": SIGNATURE}
CALL = {"type": "tool_use", "id": TOOL_ID, "name": "get_weather", "input": {"location": "Paris"}}


def loop_turn(http: httpx.Client, claude: FakeAnthropic, assistant: dict[str, Any]) -> Any:
    """The second request of a tool loop; what reached Claude as the assistant turn."""
    tool = {"role": "tool", "tool_call_id": TOOL_ID, "content": "18C"}
    result = ok(http, chat([{"role": "user", "content": "Weather?"}, assistant, tool], **LOOP))
    assert result["choices"][0]["message"]["content"] == "It is 18C in Paris."
    return claude.last("loop")[1]["messages"][1]


def test_signed_thinking_comes_back_in_a_tool_loop(
    http: httpx.Client, claude: FakeAnthropic
) -> None:
    first = ok(http, chat("Weather?", **LOOP))
    message = first["choices"][0]["message"]
    assert first["choices"][0]["finish_reason"] == "tool_calls"
    assert message["reasoning_content"] == "".join(THOUGHTS)
    assert message["reasoning_details"] == [
        {
            "type": "reasoning.text",
            "text": "".join(THOUGHTS),
            "signature": SIGNATURE,
            "format": CLAUDE,
            "index": 0,
        },
        {"type": "reasoning.encrypted", "data": REDACTED, "format": CLAUDE, "index": 1},
    ]
    # The client sends the message back as the openai SDK dumps it.
    sent = ChatCompletion.model_validate(first).choices[0].message.model_dump()
    assert loop_turn(http, claude, sent) == {
        "role": "assistant",
        "content": [SIGNED, {"type": "redacted_thinking", "data": REDACTED}, CALL],
    }
    # reasoning_content alone carries no signature: no thinking block (Anthropic accepts that).
    bare = {k: v for k, v in sent.items() if k != "reasoning_details"}
    assert loop_turn(http, claude, bare)["content"] == [CALL]


def test_streamed_reasoning_details(http: httpx.Client, claude: FakeAnthropic) -> None:
    deltas = streamed(http, chat("Weather?", **LOOP))
    pieces = [p for d in deltas for p in d.get("reasoning_details") or []]
    assert pieces == [
        {"type": "reasoning.text", "text": THOUGHTS[0], "format": CLAUDE, "index": 0},
        {"type": "reasoning.text", "text": THOUGHTS[1], "format": CLAUDE, "index": 0},
        {
            "type": "reasoning.text",
            "text": "",
            "signature": SIGNATURE,
            "format": CLAUDE,
            "index": 0,
        },
        {"type": "reasoning.encrypted", "data": REDACTED, "format": CLAUDE, "index": 1},
    ]
    assert "".join(d.get("reasoning_content") or "" for d in deltas) == "".join(THOUGHTS)
    assert sum("reasoning_content" in d for d in deltas) == 2  # none with the signature
    # A client that kept the pieces as they came: they are joined into one block again.
    call = {
        "id": TOOL_ID,
        "type": "function",
        "function": {"name": "get_weather", "arguments": '{"location": "Paris"}'},
    }
    assistant = {"role": "assistant", "content": None, "tool_calls": [call]}
    content = loop_turn(http, claude, {**assistant, "reasoning_details": pieces})["content"]
    assert content[:2] == [SIGNED, {"type": "redacted_thinking", "data": REDACTED}]
    # Reasoning inline in the content: no reasoning_details, no empty think tags.
    inline = streamed(http, chat("Weather?", **LOOP, separate_reasoning=False))
    assert not any("reasoning_details" in d for d in inline)
    text = "".join(d.get("content") or "" for d in inline)
    assert text == f"<think>{''.join(THOUGHTS)}</think>\n"
