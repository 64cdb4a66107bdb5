"""The gemini provider type: Gemini's answers, finish reasons and errors in the OpenAI shape."""

# The fixtures come from tests.gemini_relay; test arguments of the same names use them.
# ruff: noqa: F811

from __future__ import annotations

from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, chat, ok
from tests.conftest import stream_events as streamed
from tests.gemini_relay import (  # noqa: F401
    client,
    deltas,
    gemini,
    http,
    relay,
    sent,
)
from tests.gemini_upstream import GROUNDED, PNG, FakeGemini
from tests.schemas import check_completion, check_error
from tests.upstream import wait_for


@pytest.mark.parametrize(
    ("model", "reason"),
    [
        ("gemini-max", "length"),
        ("gemini-safety", "content_filter"),
        ("gemini-recitation", "content_filter"),
    ],
)
def test_finish_reasons(http: httpx.Client, model: str, reason: str) -> None:
    result = ok(http, chat("Hi", model=model))
    assert result["choices"][0]["finish_reason"] == reason
    assert result["choices"][0]["message"]["content"] == "Hel"
    assert streamed(http, chat("Hi", model=model))[-1]["choices"][0]["finish_reason"] == reason


def test_blocked_prompt_is_an_empty_filtered_answer(http: httpx.Client) -> None:
    result = ok(http, chat("Hi", model="gemini-blocked"))
    assert result["choices"][0]["finish_reason"] == "content_filter"
    assert result["choices"][0]["message"]["content"] == ""
    assert result["usage"]["prompt_tokens"] == 7 and result["usage"]["completion_tokens"] == 0
    events = streamed(http, chat("Hi", model="gemini-blocked"))
    assert events[-1]["choices"][0]["finish_reason"] == "content_filter"


def test_malformed_function_call_is_an_upstream_error(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat("Hi", model="gemini-malformed"))
    assert response.status_code == 502
    assert "MALFORMED_FUNCTION_CALL" in check_error(response.json())["message"]


def test_image_output(client: openai.OpenAI, http: httpx.Client) -> None:
    raw = client.chat.completions.with_raw_response.create(
        model="gemini-image", messages=[{"role": "user", "content": "Draw a cat"}]
    )
    body = raw.http_response.json()
    check_completion(body)
    message = body["choices"][0]["message"]
    assert message["content"] == "Here is a cat:"
    assert message["images"] == [
        {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
    ]
    assert raw.parse().choices[0].message.model_extra["images"] == message["images"]
    events = streamed(http, chat("Draw a cat", model="gemini-image"))
    images = [i for batch in deltas(events, "images") for i in batch]
    assert images == [
        {"index": 0, "type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}},
        {"index": 1, "type": "image_url", "image_url": {"url": f"data:image/jpeg;base64,{PNG}"}},
    ]


def test_logprobs(http: httpx.Client, gemini: FakeGemini) -> None:
    result = ok(http, chat("Hi", model="gemini-logprobs", logprobs=True, top_logprobs=2))
    entry = result["choices"][0]["logprobs"]["content"][0]
    assert entry["token"] == "Hi" and entry["logprob"] == -0.1
    assert [t["token"] for t in entry["top_logprobs"]] == ["Hi", "Hey"]
    assert sent(gemini, "gemini-logprobs")["generationConfig"] == {
        "responseLogprobs": True,
        "logprobs": 2,
    }


def test_search_grounding_becomes_url_citations(http: httpx.Client, gemini: FakeGemini) -> None:
    result = ok(http, chat("Who won?", model="gemini-grounded", web_search_options={}))
    message = result["choices"][0]["message"]
    content = "".join(GROUNDED)
    assert message["content"] == content
    second = GROUNDED[1].strip()
    start, end = content.index(second), content.index(second) + len(second)  # code points

    def cite(url: str, title: str, start: int, end: int) -> dict[str, Any]:
        citation = {"url": url, "title": title, "start_index": start, "end_index": end}
        return {"type": "url_citation", "url_citation": citation}

    redirect = "https://vertexaisearch.cloud.google.com/grounding-api-redirect/"
    expected = [
        cite(redirect + "a1", "uefa.com", 0, len(GROUNDED[0])),
        cite(redirect + "a1", "uefa.com", start, end),
        cite(redirect + "b2", "elpais.com", start, end),
    ]
    assert message["annotations"] == expected
    assert sent(gemini, "gemini-grounded")["tools"] == [{"googleSearch": {}}]
    events = streamed(http, chat("Who won?", model="gemini-grounded", web_search_options={}))
    assert [a for batch in deltas(events, "annotations") for a in batch] == expected


@pytest.mark.parametrize(
    ("key", "status", "words"),
    [
        ("invalid", 400, "contents is not set"),
        ("bad-key", 502, "API key not valid"),
        ("denied", 502, "unregistered callers"),
        ("internal", 502, "internal error"),
        ("overloaded", 503, "overloaded"),
        ("quota", 503, "exceeded your current quota"),
    ],
)
def test_upstream_errors(http: httpx.Client, key: str, status: int, words: str) -> None:
    response = http.post("/v1/chat/completions", json=chat("Hi", model=f"fail-{key}"))
    assert response.status_code == status, response.text
    assert words in check_error(response.json())["message"]
    if key == "quota":
        assert response.headers["Retry-After"] == "7"  # Gemini's RetryInfo


def test_failover_past_quota_and_bad_key(http: httpx.Client, gemini: FakeGemini) -> None:
    for _ in range(2):
        result = ok(http, chat("Hi", model="g-failover"))
        assert result["choices"][0]["message"]["content"] == "Hello!"
    keys = {r.headers["x-goog-api-key"] for r in gemini.requests}
    assert {"quota", "bad-key", "k3"} <= keys


@pytest.mark.parametrize("key", ["cut", "midstream"])
def test_broken_streams(http: httpx.Client, key: str) -> None:
    events = streamed(http, chat("Hi", model=f"fail-{key}"))
    assert "".join(deltas(events, "content")) == "Hello"
    assert "error" in events[-1]
    response = http.post("/v1/chat/completions", json=chat("Hi", model=f"fail-{key}"))
    assert response.status_code == 502


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"logit_bias": {"42": 5}}, "logit_bias"),
        ({"min_p": 0.1}, "min_p"),
        ({"repetition_penalty": 1.1}, "repetition_penalty"),
        ({"n": 9}, "n"),
    ],
)
def test_what_gemini_cannot_honour_is_a_400(
    http: httpx.Client, params: dict[str, Any], param: str
) -> None:
    response = http.post("/v1/chat/completions", json=chat("Hi", model="gemini-text", **params))
    assert response.status_code == 400, response.text
    assert check_error(response.json())["param"] == param


def test_model_listing(http: httpx.Client) -> None:
    model = http.get("/v1/models/gemini-text").json()
    assert model["architecture"]["input_modalities"] == ["text", "image", "audio"]
    assert {"top_k", "seed", "reasoning_effort", "logprobs"} <= set(model["supported_parameters"])
    assert "logit_bias" not in model["supported_parameters"]


def test_channel_added_through_the_cli(
    relay: Server, http: httpx.Client, gemini: FakeGemini
) -> None:
    added = relay.cli(
        "channels",
        "add",
        "g-cli",
        "--type",
        "gemini",
        "--base-url",
        gemini.url,
        "--key",
        "k9",
        "--models",
        "cli-gemini",
        "--map",
        "cli-gemini=gemini-text",
    )
    assert added.returncode == 0, added.stderr
    wait_for(lambda: http.get("/v1/models/cli-gemini").status_code == 200, timeout=10)
    assert ok(http, chat("Hi", model="cli-gemini"))["choices"][0]["message"]["content"] == "Hello!"
    assert gemini.last("gemini-text").headers["x-goog-api-key"] == "k9"
    assert "g-cli" in relay.cli("channels", "list").stdout
    assert relay.cli("channels", "remove", "g-cli").returncode == 0
