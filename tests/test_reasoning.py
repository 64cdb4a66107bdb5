"""Reasoning: <think> output split into reasoning_content or kept inline; thinking knobs."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, SECOND_MODEL, chat, sse_events
from tests.schemas import check_completion


def few_shot_thinking() -> list[dict[str, Any]]:
    # A history the small model imitates: it then opens its answer with <think>.
    messages: list[dict[str, Any]] = []
    for question, thought, answer in [
        ("Hi", "The user greets me.", "Hello!"),
        ("What is 2+2?", "Two plus two is four.", "4"),
        ("Name a colour.", "Pick a common colour.", "Blue"),
    ]:
        messages.append({"role": "user", "content": question})
        messages.append({"role": "assistant", "content": f"<think>{thought}</think>\n{answer}"})
    messages.append({"role": "user", "content": "Name an animal."})
    return messages


@pytest.mark.parametrize("separate", [None, True])
def test_thinking_goes_to_reasoning_content(http: httpx.Client, separate: bool | None) -> None:
    body = chat(few_shot_thinking(), max_tokens=30, temperature=0)
    if separate is not None:
        body["separate_reasoning"] = separate
    response = http.post("/v1/chat/completions", json=body)
    message = check_completion(response.json()).choices[0].message
    raw = response.json()["choices"][0]["message"]
    assert raw["reasoning_content"] and "<think>" not in raw["reasoning_content"]
    assert message.content and "<think>" not in message.content
    assert "</think>" not in message.content


def test_thinking_stays_inline_when_not_separate(http: httpx.Client) -> None:
    body = chat(few_shot_thinking(), max_tokens=30, temperature=0, separate_reasoning=False)
    message = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]
    assert message["content"].startswith("<think>") and "</think>" in message["content"]
    assert "reasoning_content" not in message


def test_reasoning_streams_as_reasoning_deltas(http: httpx.Client) -> None:
    body = chat(few_shot_thinking(), max_tokens=30, temperature=0, stream=True)
    with http.stream("POST", "/v1/chat/completions", json=body) as r:
        events = sse_events(r)
    deltas = [e["choices"][0]["delta"] for e in events]
    reasoning = "".join(d.get("reasoning_content") or "" for d in deltas)
    content = "".join(d.get("content") or "" for d in deltas)
    assert reasoning and "<think>" not in reasoning
    assert content and "<think>" not in content
    first_reasoning = next(i for i, d in enumerate(deltas) if d.get("reasoning_content"))
    first_content = next(i for i, d in enumerate(deltas) if d.get("content"))
    assert first_reasoning < first_content


def test_legacy_completions_keep_think_text(http: httpx.Client) -> None:
    prompt = "<think>I should count.</think>\nOne, two,"
    body = {"model": MODEL, "prompt": prompt, "max_tokens": 4, "echo": True}
    text = http.post("/v1/completions", json=body).json()["choices"][0]["text"]
    assert text.startswith(prompt)


def prompt_tokens(http: httpx.Client, **params: Any) -> int:
    body = chat("Hello", model=SECOND_MODEL, max_tokens=1, **params)
    response = http.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    return int(response.json()["usage"]["prompt_tokens"])


def test_enable_thinking_and_reasoning_effort_reach_the_chat_template(
    http: httpx.Client,
) -> None:
    plain = prompt_tokens(http)
    assert prompt_tokens(http, enable_thinking=True) == plain
    assert prompt_tokens(http, enable_thinking=False) > plain  # the template adds /no_think
    low, high = (
        prompt_tokens(http, reasoning_effort="low"),
        prompt_tokens(http, reasoning_effort="high"),
    )
    assert low > plain and high > plain


def test_models_list_shows_reasoning_parameters(http: httpx.Client) -> None:
    entry = http.get(f"/v1/models/{SECOND_MODEL}").json()
    assert {"reasoning_effort", "enable_thinking", "separate_reasoning"} <= set(
        entry["supported_parameters"]
    )
