"""Real OpenAI-compatible upstream processes behind llmrelay: llama.cpp's server (from
llama-cpp-python) and a second llmrelay, each serving the bundled model."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import jsonschema
import pytest

from llmrelay.engine.model_files import bundled_model_path
from tests.conftest import Server, chat, free_port, sse_events, start_server, stop_server
from tests.schemas import check_completion

MODELS = ["smol-lcs", "smol-peer"]  # via llama.cpp's server, via another llmrelay


@pytest.fixture(scope="module")
def llama_server() -> Iterator[str]:
    port = free_port()
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "llama_cpp.server",
            "--model",
            str(bundled_model_path()),
            "--port",
            str(port),
            "--n_ctx",
            "2048",
            "--n_threads",
            "1",
            "--model_alias",
            "smol-up",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/v1/models", timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "llama_cpp.server did not start"
        time.sleep(0.3)
    yield url + "/v1"
    process.terminate()
    process.wait(timeout=20)


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    srv = start_server(tmp_path_factory.mktemp("peer"))
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def front(
    tmp_path_factory: pytest.TempPathFactory, llama_server: str, peer: Server
) -> Iterator[httpx.Client]:
    channels = [
        {
            "name": "lcs",
            "flavor": "llama-cpp-python",
            "base_url": llama_server,
            "models": ["smol-lcs"],
            "map": {"smol-lcs": "smol-up"},
        },
        {
            "name": "peer",
            "flavor": "relay",
            "base_url": peer.url + "/v1",
            "keys": [peer.admin_key],
            "models": ["smol-peer"],
            "map": {"smol-peer": "smollm2-135m-instruct"},
        },
    ]
    srv = start_server(tmp_path_factory.mktemp("front"), extra_config={"channels": channels})
    with httpx.Client(
        base_url=srv.url, timeout=120, headers={"Authorization": f"Bearer {srv.admin_key}"}
    ) as client:
        yield client
    stop_server(srv)


def complete(front: httpx.Client, body: dict[str, Any]) -> dict[str, Any]:
    response = front.post("/v1/chat/completions", json=body)
    assert response.status_code == 200, response.text
    check_completion(response.json())
    return response.json()


@pytest.mark.parametrize("model", MODELS)
def test_plain_and_streamed_answers_with_usage(front: httpx.Client, model: str) -> None:
    result = complete(front, chat("Say hello.", model=model, max_tokens=8, temperature=0))
    assert result["model"] == model and result["choices"][0]["message"]["content"]
    usage = result["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
    with front.stream(
        "POST",
        "/v1/chat/completions",
        json=chat(
            "Say hello.",
            model=model,
            max_tokens=8,
            temperature=0,
            stream=True,
            stream_options={"include_usage": True},
        ),
    ) as r:
        events = sse_events(r)
    text = "".join(e["choices"][0]["delta"].get("content") or "" for e in events if e["choices"])
    assert text == result["choices"][0]["message"]["content"]
    assert events[-1]["choices"] == [] and events[-1]["usage"]["completion_tokens"] > 0


@pytest.mark.parametrize("model", MODELS)
def test_named_tool_call(front: httpx.Client, model: str) -> None:
    tool = {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {
                "type": "object",
                "properties": {"city": {"type": "string"}},
                "required": ["city"],
            },
        },
    }
    result = complete(
        front,
        chat(
            "Weather in Paris?",
            model=model,
            tools=[tool],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
            max_tokens=60,
        ),
    )
    call = result["choices"][0]["message"]["tool_calls"][0]
    assert call["function"]["name"] == "get_weather"
    jsonschema.validate(json.loads(call["function"]["arguments"]), tool["function"]["parameters"])


@pytest.mark.parametrize("model", MODELS)
def test_json_schema(front: httpx.Client, model: str) -> None:
    schema = {
        "type": "object",
        "properties": {"name": {"type": "string"}, "ok": {"type": "boolean"}},
        "required": ["name", "ok"],
    }
    result = complete(
        front,
        chat(
            "Describe a cat.",
            model=model,
            max_tokens=80,
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "cat", "schema": schema},
            },
        ),
    )
    jsonschema.validate(json.loads(result["choices"][0]["message"]["content"]), schema)


@pytest.mark.parametrize("model", MODELS)
def test_logprobs(front: httpx.Client, model: str) -> None:
    result = complete(
        front, chat("Say hello.", model=model, max_tokens=6, logprobs=True, top_logprobs=2)
    )
    choice = result["choices"][0]
    entries = choice["logprobs"]["content"]
    assert entries and all(e["logprob"] <= 0 for e in entries)
    assert "".join(e["token"] for e in entries) == choice["message"]["content"]


def test_sampling_parameters_reach_llama_server(front: httpx.Client) -> None:
    base = complete(front, chat("List fruits.", model="smol-lcs", max_tokens=20, temperature=0))[
        "choices"
    ][0]["message"]["content"]
    penalised = complete(
        front,
        chat(
            "List fruits.",
            model="smol-lcs",
            max_tokens=20,
            temperature=0,
            repetition_penalty=1.9,
            frequency_penalty=2.0,
        ),
    )
    assert penalised["choices"][0]["message"]["content"] != base
