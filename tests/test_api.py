"""The OpenAI SDK and raw HTTP against every route of the core API."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.conftest import MODEL, Server, chat, sse_events
from tests.schemas import check_completion, check_error, check_model_list, check_text_completion


def test_sdk_non_streaming(client: openai.OpenAI) -> None:
    completion = client.chat.completions.create(
        model=MODEL, messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    check_completion(completion.model_dump(exclude_unset=True))
    assert completion.id.startswith("chatcmpl-")
    assert completion.object == "chat.completion"
    assert completion.model == MODEL
    choice = completion.choices[0]
    assert choice.message.role == "assistant" and choice.message.content
    assert choice.finish_reason in ("stop", "length")
    assert completion.usage is not None
    assert completion.usage.total_tokens == (
        completion.usage.prompt_tokens + completion.usage.completion_tokens
    )
    assert 0 < completion.usage.completion_tokens <= 8


def test_sdk_streaming_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Count to three."}],
        max_tokens=8,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    ids = {c.id for c in chunks}
    assert len(ids) == 1 and chunks[0].id.startswith("chatcmpl-")
    assert chunks[0].choices[0].delta.role == "assistant"
    assert chunks[0].choices[0].delta.content == ""
    assert all(c.choices[0].delta.role is None for c in chunks[1:] if c.choices)
    finishing = [c for c in chunks if c.choices and c.choices[0].finish_reason]
    assert len(finishing) == 1
    assert finishing[0].choices[0].finish_reason == "length"
    assert finishing[0].choices[0].delta.content is None
    assert all(c.usage is None for c in chunks[:-1])
    last = chunks[-1]
    assert last.choices == [] and last.usage is not None
    assert last.usage.completion_tokens == 8
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text


def test_stream_without_usage_has_no_usage_chunk(http: httpx.Client) -> None:
    with http.stream(
        "POST", "/v1/chat/completions", json=chat("Hi", max_tokens=4, stream=True)
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        events = sse_events(r)
    assert all(e["choices"] for e in events)
    assert all("usage" not in e for e in events)


def test_usage_matches_model_tokenizer(http: httpx.Client) -> None:
    # The chat template of SmolLM2 adds its default system prompt; usage counts that too.
    short = http.post("/v1/chat/completions", json=chat("Hi", max_tokens=1)).json()
    longer = http.post("/v1/chat/completions", json=chat("Hi " * 50, max_tokens=1)).json()
    assert longer["usage"]["prompt_tokens"] - short["usage"]["prompt_tokens"] >= 49


@pytest.mark.parametrize(
    "path",
    [
        "/v1/chat/completions",
        "/openai/v1/chat/completions",
        "/chat/completions",
        f"/{MODEL}/v1/chat/completions",
    ],
)
def test_every_chat_route(http: httpx.Client, path: str) -> None:
    body = chat("Hello", max_tokens=2)
    if path.startswith(f"/{MODEL}"):
        del body["model"]  # seed 000: the model is in the path
    response = http.post(path, json=body)
    assert response.status_code == 200, response.text
    assert check_completion(response.json()).model == MODEL


def test_path_model_wins_over_body(http: httpx.Client) -> None:
    response = http.post(
        f"/{MODEL}/v1/chat/completions", json=chat("Hello", max_tokens=2, model="gpt-5-2")
    )
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


def test_no_model_uses_default(http: httpx.Client) -> None:
    response = http.post(
        "/v1/chat/completions",
        json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
    )
    assert response.status_code == 200
    assert response.json()["model"] == MODEL


def test_model_names_are_case_insensitive(http: httpx.Client) -> None:
    response = http.post("/v1/chat/completions", json=chat("Hi", max_tokens=2, model=MODEL.upper()))
    assert response.status_code == 200


@pytest.mark.parametrize("path", ["/v1/models", "/openai/v1/models", "/models"])
def test_models_list(http: httpx.Client, path: str) -> None:
    response = http.get(path)
    assert response.status_code == 200
    models = check_model_list(response.json())
    assert MODEL in [m.id for m in models]
    entry = next(m for m in response.json()["data"] if m["id"] == MODEL)
    assert entry["context_length"] == 2048
    assert entry["architecture"]["input_modalities"] == ["text"]
    assert "temperature" in entry["supported_parameters"]
    assert "pricing" in entry


def test_sdk_models(client: openai.OpenAI) -> None:
    assert MODEL in [m.id for m in client.models.list()]
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError) as err:
        client.models.retrieve("no-such-model")
    assert err.value.code == "model_not_found"


def test_legacy_completions(http: httpx.Client, client: openai.OpenAI) -> None:
    response = http.post(
        "/v1/completions",
        json={
            "model": MODEL,
            "prompt": "Once upon a time",
            "max_tokens": 4,
            "logprobs": 2,
            "echo": True,
        },
    )
    assert response.status_code == 200, response.text
    completion = check_text_completion(response.json())
    assert completion.choices[0].text.startswith("Once upon a time")
    assert completion.usage is not None and completion.usage.completion_tokens == 4
    sdk = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3)
    assert sdk.choices[0].text and sdk.choices[0].finish_reason == "length"
    stream = client.completions.create(model=MODEL, prompt="The sky is", max_tokens=3, stream=True)
    parts = list(stream)
    assert parts[-1].choices[0].finish_reason == "length"


def test_health_and_readiness(server: Server) -> None:
    assert httpx.get(server.url + "/healthz").json() == {"status": "ok"}
    ready = httpx.get(server.url + "/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"


def test_request_id_header(http: httpx.Client) -> None:
    response = http.get("/v1/models")
    assert response.headers["x-request-id"].startswith("req_")
    echoed = http.get("/v1/models", headers={"x-request-id": "my-trace-1"})
    assert echoed.headers["x-request-id"] == "my-trace-1"
    error = http.post("/v1/chat/completions", content=b"{")
    assert error.headers["x-request-id"]


def test_admin_key_printed_once_at_first_start(server: Server) -> None:
    printed = [line for line in server.output if line.startswith("sk-")]
    assert printed == [server.admin_key + "\n"]
    assert "shown only this once" in "".join(server.output)
    assert (server.data_dir / "llmrelay.db").is_file()


def test_unknown_route_is_json_404(http: httpx.Client) -> None:
    response = http.get("/v2/nothing")
    assert response.status_code == 404
    check_error(response.json())


def test_wrong_method_is_json_405(http: httpx.Client) -> None:
    response = http.get("/v1/chat/completions")
    assert response.status_code == 405
    check_error(response.json())
