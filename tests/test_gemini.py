"""The gemini provider type: what llmrelay sends Gemini for each kind of OpenAI request."""

# The fixtures come from tests.gemini_relay; test arguments of the same names use them.
# ruff: noqa: F811

from __future__ import annotations

import json
from typing import Any

import httpx
import openai
import pytest

from llmrelay.providers.gemini_wire import DUMMY_SIGNATURE, signature_of
from tests.conftest import chat, ok
from tests.conftest import stream_events as streamed
from tests.gemini_relay import (  # noqa: F401
    TOOL,
    client,
    deltas,
    gemini,
    http,
    relay,
    sent,
)
from tests.gemini_upstream import PNG, SIGNATURE, FakeGemini
from tests.schemas import check_completion, check_error


def test_text_and_the_request_sent(client: openai.OpenAI, gemini: FakeGemini) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="g-flash",
        messages=[
            {"role": "system", "content": "Be brief."},
            {"role": "developer", "content": "Answer in English."},
            {"role": "user", "content": "Hi"},
            {"role": "assistant", "content": "Hello, how can I help?"},
            {"role": "user", "content": "Say hello"},
        ],
        temperature=0.5,
        top_p=0.9,
        stop=["END"],
        max_tokens=50,
        seed=7,
        presence_penalty=0.1,
        frequency_penalty=0.2,
        extra_body={"top_k": 20},
    )
    check_completion(raw.http_response.json())
    result = raw.parse()
    assert result.choices[0].message.content == "Hello!"
    assert result.choices[0].finish_reason == "stop"
    assert raw.http_response.json()["usage"] == {
        "prompt_tokens": 9,
        "completion_tokens": 3,
        "total_tokens": 12,
        "prompt_tokens_details": {"cached_tokens": 4},
        "completion_tokens_details": {"reasoning_tokens": 0},
    }
    request = gemini.last("gemini-2.5-flash")
    assert request.path == "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse"
    assert request.headers["x-goog-api-key"] == "k1" and "authorization" not in request.headers
    assert request.body == {
        "contents": [
            {"role": "user", "parts": [{"text": "Hi"}]},
            {"role": "model", "parts": [{"text": "Hello, how can I help?"}]},
            {"role": "user", "parts": [{"text": "Say hello"}]},
        ],
        "systemInstruction": {"parts": [{"text": "Be brief."}, {"text": "Answer in English."}]},
        "generationConfig": {
            "temperature": 0.5,
            "topP": 0.9,
            "topK": 20,
            "seed": 7,
            "presencePenalty": 0.1,
            "frequencyPenalty": 0.2,
            "stopSequences": ["END"],
            "maxOutputTokens": 50,
        },
    }


def test_streamed_text(client: openai.OpenAI, http: httpx.Client, gemini: FakeGemini) -> None:
    events = streamed(http, chat("Hi", model="g-flash-b", stream_options={"include_usage": True}))
    assert events[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert "".join(deltas(events, "content")) == "Hello!"
    assert [c["finish_reason"] for e in events for c in e["choices"] if c["finish_reason"]] == [
        "stop"
    ]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["total_tokens"] == 12
    assert gemini.last("gemini-2.5-flash").headers["x-goog-api-key"] == "k2"  # .../v1beta/ base
    chunks = list(
        client.chat.completions.create(
            model="gemini-text", messages=[{"role": "user", "content": "Hi"}], stream=True
        )
    )
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices) == "Hello!"


def test_n_candidates(http: httpx.Client, gemini: FakeGemini) -> None:
    result = ok(http, chat("Hi", model="gemini-text", n=2))
    assert [c["message"]["content"] for c in result["choices"]] == ["Hello!", "Hello!"]
    assert result["usage"]["completion_tokens"] == 6
    assert sent(gemini, "gemini-text")["generationConfig"] == {"candidateCount": 2}
    events = streamed(http, chat("Hi", model="gemini-text", n=2))
    assert "".join(deltas(events, "content", 1)) == "Hello!"


def test_images_inline_and_fetched(http: httpx.Client, gemini: FakeGemini) -> None:
    content = [
        {"type": "text", "text": "Compare:"},
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": gemini.image_url}},
    ]
    ok(http, chat([{"role": "user", "content": content}], model="gemini-text"))
    assert sent(gemini, "gemini-text")["contents"] == [
        {
            "role": "user",
            "parts": [
                {"text": "Compare:"},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
                {"inlineData": {"mimeType": "image/png", "data": PNG}},
            ],
        }
    ]
    private = [{"type": "image_url", "image_url": {"url": gemini.url + "/cat.png"}}]
    refused = http.post(
        "/v1/chat/completions",
        json=chat([{"role": "user", "content": private}], model="gemini-text"),
    )
    assert refused.status_code == 400
    assert check_error(refused.json())["code"] == "image_fetch_refused"


def test_audio_and_video(http: httpx.Client, gemini: FakeGemini) -> None:
    youtube = "https://www.youtube.com/watch?v=9hE5-98ZeCg"
    content = [
        {"type": "input_audio", "input_audio": {"data": "UklGRg==", "format": "wav"}},
        {"type": "video_url", "video_url": {"url": "data:video/mp4;base64,AAAAGGZ0eXA="}},
        {"type": "video_url", "video_url": {"url": youtube}},
    ]
    ok(http, chat([{"role": "user", "content": content}], model="g-video"))
    assert gemini.last("gemini-text").headers["x-goog-api-key"] == "k4"
    assert sent(gemini, "gemini-text")["contents"][0]["parts"] == [
        {"inlineData": {"mimeType": "audio/wav", "data": "UklGRg=="}},
        {"inlineData": {"mimeType": "video/mp4", "data": "AAAAGGZ0eXA="}},
        {"fileData": {"fileUri": youtube}},
    ]
    refused = http.post(
        "/v1/chat/completions",
        json=chat([{"role": "user", "content": content[1:]}], model="gemini-text"),
    )
    assert refused.status_code == 400
    assert check_error(refused.json())["param"] == "messages[0].content[0]"


def test_tool_round_trip(http: httpx.Client, gemini: FakeGemini) -> None:
    result = ok(http, chat("Weather?", model="gemini-tool", tools=[TOOL], tool_choice="required"))
    choice = result["choices"][0]
    assert choice["finish_reason"] == "tool_calls"
    assert choice["message"]["content"] == "Let me check."
    first, second = choice["message"]["tool_calls"]
    assert signature_of(first["id"]) == SIGNATURE and signature_of(second["id"]) is None
    assert first["id"].startswith("call_") and first["id"] != second["id"]
    assert first["function"] == {
        "name": "get_weather",
        "arguments": '{"location":"San Francisco, CA"}',
    }
    assert json.loads(second["function"]["arguments"]) == {"location": "Paris"}
    assert result["usage"]["completion_tokens"] == 32
    body = sent(gemini, "gemini-tool")
    assert body["tools"] == [
        {
            "functionDeclarations": [
                {
                    "name": "get_weather",
                    "description": "Weather in a city",
                    "parametersJsonSchema": TOOL["function"]["parameters"],
                }
            ]
        }
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "ANY"}}

    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": "Let me check.", "tool_calls": [first, second]},
        {"role": "tool", "tool_call_id": first["id"], "content": "18C"},
        {"role": "tool", "tool_call_id": second["id"], "content": '{"temp": 21}'},
    ]
    answer = ok(http, chat(history, model="gemini-tool", tools=[TOOL]))
    assert answer["choices"][0]["message"]["content"] == "It is 18C in SF."
    assert answer["choices"][0]["finish_reason"] == "stop"
    body = sent(gemini, "gemini-tool")
    assert body["contents"][1:] == [
        {
            "role": "model",
            "parts": [
                {"text": "Let me check."},
                {
                    "functionCall": {
                        "name": "get_weather",
                        "args": {"location": "San Francisco, CA"},
                    },
                    "thoughtSignature": SIGNATURE,
                },
                {"functionCall": {"name": "get_weather", "args": {"location": "Paris"}}},
            ],
        },
        {
            "role": "user",
            "parts": [
                {"functionResponse": {"name": "get_weather", "response": {"output": "18C"}}},
                {"functionResponse": {"name": "get_weather", "response": {"temp": 21}}},
            ],
        },
    ]
    assert body["toolConfig"] == {"functionCallingConfig": {"mode": "AUTO"}}


def test_streamed_tool_calls(http: httpx.Client) -> None:
    events = streamed(http, chat("Weather?", model="gemini-tool", tools=[TOOL]))
    calls = deltas(events, "tool_calls")
    assert [c[0]["index"] for c in calls] == [0, 1]
    assert calls[0][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"location":"San Francisco, CA"}',
    }
    assert signature_of(calls[0][0]["id"]) == SIGNATURE
    assert events[-1]["choices"][0]["finish_reason"] == "tool_calls"


@pytest.mark.parametrize(
    ("tool_choice", "config"),
    [
        ("auto", {"mode": "AUTO"}),
        ("none", {"mode": "NONE"}),
        (
            {"type": "function", "function": {"name": "get_weather"}},
            {"mode": "ANY", "allowedFunctionNames": ["get_weather"]},
        ),
    ],
)
def test_tool_choice(
    http: httpx.Client, gemini: FakeGemini, tool_choice: Any, config: dict[str, Any]
) -> None:
    ok(http, chat("Hi", model="gemini-text", tools=[TOOL], tool_choice=tool_choice))
    assert sent(gemini, "gemini-text")["toolConfig"] == {"functionCallingConfig": config}


def test_gemini_3_gets_a_signature_on_every_call_turn(
    http: httpx.Client, gemini: FakeGemini
) -> None:
    call = {
        "id": "call_from_elsewhere",
        "type": "function",
        "function": {"name": "get_weather", "arguments": "{}"},
    }
    history = [
        {"role": "user", "content": "Weather?"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "call_from_elsewhere", "content": "18C"},
    ]
    ok(http, chat(history, model="gemini-3-pro-preview", tools=[TOOL]))
    part = sent(gemini, "gemini-3-pro-preview")["contents"][1]["parts"][0]
    assert part["thoughtSignature"] == DUMMY_SIGNATURE
    orphan = [
        {"role": "user", "content": "Hi"},
        {"role": "tool", "tool_call_id": "x", "content": ""},
    ]
    refused = http.post("/v1/chat/completions", json=chat(orphan, model="gemini-tool"))
    assert refused.status_code == 400
    assert check_error(refused.json())["param"] == "messages[1].tool_call_id"


def test_response_formats(http: httpx.Client, gemini: FakeGemini) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]}
    response_format = {"type": "json_schema", "json_schema": {"name": "A", "schema": schema}}
    ok(http, chat("Hi", model="gemini-text", response_format=response_format))
    assert sent(gemini, "gemini-text")["generationConfig"] == {
        "responseMimeType": "application/json",
        "responseJsonSchema": schema,
    }
    ok(http, chat("Hi", model="gemini-text", response_format={"type": "json_object"}))
    assert sent(gemini, "gemini-text")["generationConfig"] == {
        "responseMimeType": "application/json"
    }


def test_reasoning(http: httpx.Client, gemini: FakeGemini) -> None:
    result = ok(http, chat("6x7?", model="gemini-think", reasoning_effort="high"))
    message = result["choices"][0]["message"]
    assert message["reasoning_content"] == "**Multiplying**\n\nSix times seven is 42."
    assert message["content"] == "The answer is 42."
    assert result["usage"]["completion_tokens"] == 37
    assert result["usage"]["completion_tokens_details"] == {"reasoning_tokens": 31}
    assert sent(gemini, "gemini-think")["generationConfig"] == {
        "thinkingConfig": {"includeThoughts": True, "thinkingBudget": 24576}
    }
    inline = ok(
        http, chat("6x7?", model="gemini-think", enable_thinking=True, separate_reasoning=False)
    )
    assert inline["choices"][0]["message"]["content"] == (
        "<think>**Multiplying**\n\nSix times seven is 42.</think>\nThe answer is 42."
    )
    assert "reasoning_content" not in inline["choices"][0]["message"]
    events = streamed(http, chat("6x7?", model="gemini-think", reasoning_effort="low"))
    assert deltas(events, "reasoning_content") == ["**Multiplying**\n\nSix times seven", " is 42."]
    assert "".join(deltas(events, "content")) == "The answer is 42."


@pytest.mark.parametrize(
    ("model", "params", "thinking"),
    [
        ("gemini-think", {"reasoning_effort": "minimal"}, {"thinkingBudget": 512}),
        ("gemini-think", {"reasoning_effort": "low"}, {"thinkingBudget": 1024}),
        ("gemini-think", {"reasoning_effort": "medium"}, {"thinkingBudget": 8192}),
        ("gemini-think", {"enable_thinking": True}, {}),
        ("gemini-3-flash-preview", {"reasoning_effort": "low"}, {"thinkingLevel": "low"}),
    ],
)
def test_thinking_budgets(
    http: httpx.Client,
    gemini: FakeGemini,
    model: str,
    params: dict[str, Any],
    thinking: dict[str, Any],
) -> None:
    ok(http, chat("Hi", model=model, **params))
    config = sent(gemini, model)["generationConfig"]["thinkingConfig"]
    assert config == {"includeThoughts": True, **thinking}


@pytest.mark.parametrize(
    ("model", "params", "thinking"),
    [
        ("gemini-think", {"reasoning_effort": "none"}, {"thinkingBudget": 0}),
        ("gemini-think", {"enable_thinking": False}, {"thinkingBudget": 0}),
        ("gemini-3-flash-preview", {"enable_thinking": False}, {"thinkingLevel": "minimal"}),
    ],
)
def test_thinking_off(
    http: httpx.Client,
    gemini: FakeGemini,
    model: str,
    params: dict[str, Any],
    thinking: dict[str, Any],
) -> None:
    ok(http, chat("Hi", model=model, **params))
    assert sent(gemini, model)["generationConfig"] == {"thinkingConfig": thinking}
