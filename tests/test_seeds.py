"""Every request of the three seed documents, verbatim but for host, key and model.

The bundled model reads text only, so bodies that carry an image get the documented clear 400;
the same bodies with only the image part taken out get a full answer.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.conftest import MODEL, Server, sse_events, start_server, stop_server
from tests.schemas import check_completion, check_error

SEEDS = Path(__file__).parent / "data" / "seeds"


def seed(name: str) -> str:
    return (SEEDS / name).read_text()


def without_image_parts(body: dict[str, Any]) -> dict[str, Any]:
    for message in body["messages"]:
        if isinstance(message["content"], list):
            message["content"] = [
                p for p in message["content"] if p["type"] not in ("image_url", "input_image")
            ]
    return body


@pytest.fixture(scope="module")
def relaxed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("relaxed"), extra_config={"relaxed_json": True})
    yield srv
    stop_server(srv)


# -- seed 000: kie.ai, model in the path -----------------------------------------------------


def seed000_url(server: Server) -> str:
    return f"{server.url}/{MODEL}/v1/chat/completions"  # was /gpt-5-2/v1/chat/completions


def test_seed000_verbatim_refuses_the_image_clearly(server: Server) -> None:
    response = httpx.post(
        seed000_url(server),
        content=seed("seed000.json").encode(),
        headers={"Authorization": f"Bearer {server.admin_key}", "Content-Type": "application/json"},
    )
    assert response.status_code == 400
    error = check_error(response.json())
    assert error["param"] == "messages[0].content[1]"
    assert error["code"] == "image_not_supported"
    assert "does not accept images" in error["message"]


@pytest.mark.parametrize("stream", [False, True])
def test_seed000_without_the_image_answers(server: Server, stream: bool) -> None:
    body = without_image_parts(json.loads(seed("seed000.json")))
    assert body["tools"] == [{"type": "function", "function": {"name": "web_search"}}]
    assert body["reasoning_effort"] == "high"
    body["max_tokens"] = 16  # keeps the suite fast; not part of the seed
    if stream:
        body["stream"] = True
    headers = {"Authorization": f"Bearer {server.admin_key}"}
    if stream:
        with httpx.stream("POST", seed000_url(server), json=body, headers=headers, timeout=60) as r:
            assert r.status_code == 200
            events = sse_events(r)
        assert "".join(e["choices"][0]["delta"].get("content") or "" for e in events)
        return
    response = httpx.post(seed000_url(server), json=body, headers=headers, timeout=60)
    assert response.status_code == 200, response.text
    completion = check_completion(response.json())
    assert completion.model == MODEL
    assert completion.choices[0].message.content
    assert completion.choices[0].message.tool_calls is None  # web_search is server-side


# -- seed 001: 快马AI, a repeated Authorization header and a trailing comma ----------------


def seed001_headers(key: str) -> list[tuple[str, str]]:
    return [
        ("Authorization", f"Bearer {key}"),
        ("Authorization", f"Bearer {key}"),
        ("Content-Type", "application/json"),
    ]


def seed001_body() -> str:
    return seed("seed001.json").replace('"gpt-5.4"', f'"{MODEL}"')


def test_seed001_trailing_comma_is_a_clear_400(server: Server) -> None:
    body = seed001_body()
    response = httpx.post(
        server.url + "/v1/chat/completions",
        content=body.encode(),
        headers=seed001_headers(server.admin_key),
    )
    assert response.status_code == 400
    error = check_error(response.json())
    assert error["code"] == "invalid_json"
    comma = re.search(r'"text": "[^"]*",\n', body)
    assert comma is not None
    at = comma.end() - 2  # the comma itself; columns count characters, not bytes
    line = body.count("\n", 0, at) + 1
    column = at - body.rfind("\n", 0, at)
    assert f"trailing comma at line {line} column {column}" in error["message"], error


def test_seed001_relaxed_json_parses_and_refuses_the_image(relaxed: Server) -> None:
    response = httpx.post(
        relaxed.url + "/v1/chat/completions",
        content=seed001_body().encode(),
        headers=seed001_headers(relaxed.admin_key),
    )
    assert response.status_code == 400
    error = check_error(response.json())
    assert (error["param"], error["code"]) == ("messages[0].content[1]", "image_not_supported")


def test_seed001_relaxed_json_without_the_image_streams(relaxed: Server) -> None:
    text = seed001_body()
    image_part = re.search(r',\s*\{\s*"type": "input_image".*?\}\s*\}', text, re.S)
    assert image_part is not None
    text = text[: image_part.start()] + text[image_part.end() :]  # the trailing comma stays
    with httpx.stream(
        "POST",
        relaxed.url + "/v1/chat/completions",
        content=text.encode(),
        headers=seed001_headers(relaxed.admin_key),
        timeout=120,
    ) as r:
        assert r.status_code == 200, r.read()
        events = sse_events(r)
    assert events[-1]["choices"][0]["finish_reason"] in ("stop", "length", "tool_calls")


def test_seed001_conflicting_authorization_headers(server: Server) -> None:
    headers = [
        ("Authorization", f"Bearer {server.admin_key}"),
        ("Authorization", "Bearer sk-other"),
    ]
    response = httpx.post(
        server.url + "/v1/chat/completions",
        json={"model": MODEL, "messages": [{"role": "user", "content": "x"}]},
        headers=headers,
    )
    assert response.status_code == 400
    assert check_error(response.json())["param"] == "Authorization"


# -- seed 002: jiekou.ai, a template of placeholders -----------------------------------------

SEED002_FILL = {
    '"model": "<string>"': f'"model": "{MODEL}"',
    '"type": "<string>",\n        "text": "<string>"': '"type": "text",\n        "text": "Hello"',
    '"image_url": "<string>"': '"image_url": "https://example.com/a.png"',
    '"video_url": "<string>"': '"video_url": "https://example.com/a.mp4"',
    '"role": "<string>"': '"role": "user"',
    '"tools": {\n    "type": "<string>"': '"tools": {\n    "type": "function"',
    '"function": {\n      "name": "<string>"': '"function": {\n      "name": "lookup"',
    '"response_format": {\n    "type": "<string>"': (
        '"response_format": {\n    "type": "json_schema"'
    ),
    '"json_schema": {\n      "name": "<string>"': '"json_schema": {\n      "name": "answer"',
    '"name": "<string>"': '"name": "tester"',  # the message's name: what is left
}


def seed002_filled() -> str:
    text = seed("seed002.json")
    for placeholder, value in SEED002_FILL.items():
        assert placeholder in text, placeholder
        text = text.replace(placeholder, value, 1)
    assert "<string>" not in text
    return text


def seed002_headers(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}", "Content-Type": "application/json"}


def test_seed002_template_with_values_filled_in(server: Server) -> None:
    response = httpx.post(
        server.url + "/openai/v1/chat/completions",
        content=seed002_filled().encode(),
        headers=seed002_headers(server.admin_key),
        timeout=120,
    )
    assert response.status_code == 200, response.text
    completion = check_completion(response.json())
    assert completion.usage is not None and completion.usage.completion_tokens <= 123
    content = completion.choices[0].message.content
    if completion.choices[0].finish_reason == "stop":
        assert content is not None
        json.loads(content)  # json_schema with the template's empty schema: any JSON


def test_seed002_streaming_with_usage(server: Server) -> None:
    text = seed002_filled().replace('"stream": {}', '"stream": true')
    with httpx.stream(
        "POST",
        server.url + "/openai/v1/chat/completions",
        content=text.encode(),
        headers=seed002_headers(server.admin_key),
        timeout=120,
    ) as r:
        assert r.status_code == 200
        events = sse_events(r)
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] <= 123


def test_seed002_unfilled_placeholders_get_a_clear_400(server: Server) -> None:
    text = seed("seed002.json").replace('"model": "<string>"', f'"model": "{MODEL}"')
    response = httpx.post(
        server.url + "/openai/v1/chat/completions",
        content=text.encode(),
        headers=seed002_headers(server.admin_key),
    )
    assert response.status_code == 400
    error = check_error(response.json())
    assert error["param"] == "messages[0].role"
    assert "'<string>'" in error["message"]
