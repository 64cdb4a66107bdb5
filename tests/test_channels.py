"""Channels of type openai: relaying, parameter mapping per flavor, reasoning, failover."""

from __future__ import annotations

import json
import socket
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import Server, chat, ok, start_server, stop_server
from tests.conftest import stream_events as stream
from tests.schemas import check_error
from tests.upstream import FakeUpstream, wait_for

FAULTS = ["refuse", "hang", "429", "500", "503", "401", "reset", "malformed", "slow-first"]


def closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def channel(
    name: str, up: FakeUpstream, key: str, models: list[str], **extra: Any
) -> dict[str, Any]:
    return {"name": name, "base_url": up.url, "keys": [key], "models": models, **extra}


def channels_for(up: FakeUpstream) -> list[dict[str, Any]]:
    fast = {"first_byte_timeout": 1.0, "idle_timeout": 1.0, "connect_timeout": 1.0}
    out = [
        channel(
            "up-ok", up, "ok", ["up-model", "up-alias"], map={"up-alias": "real-upstream-name"}
        ),
        {**channel("rotating", up, "ok:1", ["rot-model"]), "keys": ["ok:1", "ok:2"]},
        channel("llamacpp", up, "ok:llamacpp", ["lc-model"], flavor="llamacpp"),
        channel("vllm", up, "ok:vllm", ["vllm-model"], flavor="vllm"),
        channel("openai", up, "ok:openai", ["gpt-5-mini", "gpt-4o"], flavor="openai"),
        channel("deepseek", up, "ok:deepseek", ["deepseek-reasoner"], flavor="deepseek"),
        channel("reason", up, "reasoning", ["r-model"]),
        channel("reason-alt", up, "reasoning-alt", ["r2-model"]),
        channel("think", up, "think", ["think-model"]),
        channel("nousage", up, "nousage", ["nousage-model"]),
        channel("json", up, "json", ["json-model"]),
        channel("novision", up, "ok", ["text-only-up"], capabilities={"vision": False}),
        channel("cut", up, "cut", ["cut-model"], priority=1, **fast),
        channel("cut-good", up, "ok", ["cut-model"]),
        channel("late", up, "malformed-late", ["late-model"], **fast),
        channel("drip", up, "drip:2", ["drip-model"], **fast),
        channel("long", up, "drip:0.2", ["long-model"]),
        channel("event", up, "error-event", ["event-model"], **fast),
        channel("client-error", up, "400", ["fo-400"], priority=1),
        channel("client-error-good", up, "ok", ["fo-400"]),
        channel("doom-500", up, "500", ["doomed"], **fast),
        channel("doom-hang", up, "hang", ["doomed"], **fast),
        channel("busy-1", up, "429", ["busy"]),
        channel("busy-2", up, "429", ["busy"]),
        channel("slow-1", up, "hang", ["slow"], **fast),
        channel("breaker-bad", up, "500:breaker", ["breaker-model"], priority=1, **fast),
        channel("breaker-good", up, "ok", ["breaker-model"]),
    ]
    for fault in FAULTS:
        bad = channel(f"{fault}-bad", up, fault, [f"fo-{fault}"], priority=1, **fast)
        if fault == "refuse":
            bad["base_url"] = f"http://127.0.0.1:{closed_port()}/v1"
        out += [bad, channel(f"{fault}-good", up, "ok", [f"fo-{fault}"])]
    return out


@pytest.fixture(scope="module")
def upstream() -> FakeUpstream:
    return FakeUpstream().start()


@pytest.fixture(scope="module")
def relay(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Server]:
    config = {
        "channels": channels_for(upstream),
        "circuit_failures": 2,
        "circuit_cooldown_seconds": 1.0,
        "channel_refresh_seconds": 0.5,
    }
    srv = start_server(tmp_path_factory.mktemp("relay"), extra_config=config)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def rhttp(relay: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=relay.url, timeout=60, headers={"Authorization": f"Bearer {relay.admin_key}"}
    ) as c:
        yield c


def streamed_text(events: list[dict[str, Any]], key: str = "content") -> str:
    return "".join(e["choices"][0]["delta"].get(key) or "" for e in events if e.get("choices"))


# -- relaying ------------------------------------------------------------------------------


def test_models_list_includes_channel_models(rhttp: httpx.Client) -> None:
    data = {m["id"]: m for m in rhttp.get("/v1/models").json()["data"]}
    assert {"up-model", "up-alias", "gpt-4o", "smollm2-135m-instruct"} <= set(data)
    assert data["up-model"]["owned_by"] == "up-ok"


def test_sdk_through_a_channel(relay: Server, upstream: FakeUpstream) -> None:
    client = openai.OpenAI(base_url=relay.url + "/v1", api_key=relay.admin_key, max_retries=0)
    completion = client.chat.completions.create(
        model="up-model", messages=[{"role": "user", "content": "Hi"}]
    )
    assert completion.choices[0].message.content == "Hello from up-model."
    assert completion.usage is not None
    assert (completion.usage.prompt_tokens, completion.usage.completion_tokens) == (11, 7)
    assert completion.usage.prompt_tokens_details.cached_tokens == 3  # type: ignore[union-attr]
    chunks = list(
        client.chat.completions.create(
            model="up-model",
            messages=[{"role": "user", "content": "Hi"}],
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "Hello from up-model."
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens == 18
    sent = upstream.bodies("ok")[-1]
    assert sent["stream"] is True and sent["stream_options"] == {"include_usage": True}


def test_usage_chunk_only_when_asked(rhttp: httpx.Client) -> None:
    events = stream(rhttp, chat("Hi", model="up-model"))
    assert all(e["choices"] for e in events) and all("usage" not in e for e in events)


def test_model_mapping(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    result = ok(rhttp, chat("Hi", model="up-alias"))
    assert result["model"] == "up-alias"
    assert upstream.bodies("ok")[-1]["model"] == "real-upstream-name"


def test_keys_are_used_in_turn(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    for _ in range(4):
        ok(rhttp, chat("Hi", model="rot-model"))
    assert len(upstream.bodies("ok:1")) >= 2 and len(upstream.bodies("ok:2")) >= 2


def test_tool_calls_relayed_as_they_stream(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    tools = [
        {
            "type": "function",
            "function": {
                "name": "get_weather",
                "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
            },
        }
    ]
    body = chat("Weather?", model="up-model", tools=tools, tool_choice="required")
    message = ok(rhttp, body)["choices"][0]
    assert message["finish_reason"] == "tool_calls"
    assert message["message"]["tool_calls"][0]["function"] == {
        "name": "get_weather",
        "arguments": '{"city": "Paris"}',
    }
    sent = upstream.bodies("ok")[-1]
    assert sent["tools"] == tools and sent["tool_choice"] == "required"
    events = stream(rhttp, body)
    pieces = [
        d["function"]["arguments"]
        for e in events
        for d in e["choices"][0]["delta"].get("tool_calls") or []
        if d["function"].get("arguments")
    ]
    assert pieces == ['{"city"', ': "Pa', 'ris"}']


def test_parameters_pass_through_field_by_field(
    rhttp: httpx.Client, upstream: FakeUpstream
) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    ok(
        rhttp,
        chat(
            "Hi",
            model="up-model",
            temperature=0.3,
            top_p=0.8,
            top_k=5,
            min_p=0.1,
            seed=9,
            stop=["x", "y"],
            n=2,
            logit_bias={"42": -100},
            logprobs=True,
            top_logprobs=2,
            max_tokens=20,
            frequency_penalty=0.5,
            presence_penalty=0.25,
            repetition_penalty=1.1,
            user="u1",
            response_format={
                "type": "json_schema",
                "json_schema": {"name": "s", "schema": schema, "strict": True},
            },
        ),
    )
    sent = upstream.bodies("ok")[-1]
    expected = {
        "temperature": 0.3,
        "top_p": 0.8,
        "top_k": 5,
        "min_p": 0.1,
        "seed": 9,
        "stop": ["x", "y"],
        "n": 2,
        "logit_bias": {"42": -100.0},
        "logprobs": True,
        "top_logprobs": 2,
        "max_tokens": 20,
        "frequency_penalty": 0.5,
        "presence_penalty": 0.25,
        "repetition_penalty": 1.1,
        "user": "u1",
        "response_format": {
            "type": "json_schema",
            "json_schema": {"name": "s", "schema": schema, "strict": True},
        },
    }
    assert {k: sent.get(k) for k in expected} == expected


def test_n_choices_and_logprobs_relayed(rhttp: httpx.Client) -> None:
    result = ok(rhttp, chat("Hi", model="up-model", n=2, logprobs=True))
    assert [c["index"] for c in result["choices"]] == [0, 1]
    tokens = [t["token"] for t in result["choices"][1]["logprobs"]["content"]]
    assert "".join(tokens) == result["choices"][1]["message"]["content"]


def test_llamacpp_flavor_mapping(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    ok(rhttp, chat("Hi", model="lc-model", repetition_penalty=1.2, top_k=3, enable_thinking=False))
    sent = upstream.bodies("ok:llamacpp")[-1]
    assert sent["repeat_penalty"] == 1.2 and "repetition_penalty" not in sent
    assert sent["top_k"] == 3
    assert sent["chat_template_kwargs"] == {"enable_thinking": False}


def test_vllm_flavor_thinking_switch(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    ok(rhttp, chat("Hi", model="vllm-model", enable_thinking=True))
    sent = upstream.bodies("ok:vllm")[-1]
    assert sent["chat_template_kwargs"] == {"enable_thinking": True}
    assert "enable_thinking" not in sent


def test_openai_flavor(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_content": "greeting"},
        {"role": "user", "content": "Again"},
    ]
    ok(rhttp, chat(history, model="gpt-5-mini", max_tokens=5, reasoning_effort="low"))
    sent = upstream.bodies("ok:openai")[-1]
    assert sent["max_completion_tokens"] == 5 and "max_tokens" not in sent
    assert sent["reasoning_effort"] == "low"
    assert "reasoning_content" not in sent["messages"][1]
    for param, value in (("top_k", 3), ("repetition_penalty", 1.1), ("min_p", 0.2)):
        response = rhttp.post(
            "/v1/chat/completions", json=chat("Hi", model="gpt-4o", **{param: value})
        )
        assert response.status_code == 400
        assert check_error(response.json())["param"] == param
    response = rhttp.post(
        "/v1/chat/completions", json=chat("Hi", model="gpt-4o", enable_thinking=True)
    )
    assert check_error(response.json())["param"] == "enable_thinking"


def test_deepseek_flavor(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_content": "greeting"},
        {"role": "user", "content": "Again"},
    ]
    ok(rhttp, chat(history, model="deepseek-reasoner", enable_thinking=False))
    sent = upstream.bodies("ok:deepseek")[-1]
    assert sent["thinking"] == {"type": "disabled"}
    assert sent["messages"][1]["reasoning_content"] == "greeting"


def test_reasoning_content_forwarded_to_relays(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    history = [
        {"role": "user", "content": "Hi"},
        {"role": "assistant", "content": "Hello", "reasoning_content": "greeting"},
        {"role": "user", "content": "Again"},
    ]
    ok(rhttp, chat(history, model="up-model"))
    assert upstream.bodies("ok")[-1]["messages"][1]["reasoning_content"] == "greeting"


@pytest.mark.parametrize("model", ["r-model", "r2-model", "think-model"])
def test_reasoning_from_upstreams(rhttp: httpx.Client, model: str) -> None:
    message = ok(rhttp, chat("Hi", model=model))["choices"][0]["message"]
    assert message["reasoning_content"] in ("Let me think.", "plan")
    assert "<think>" not in message["content"]
    events = stream(rhttp, chat("Hi", model=model))
    assert streamed_text(events, "reasoning_content") in ("Let me think.", "plan")
    inline = ok(rhttp, chat("Hi", model=model, separate_reasoning=False))
    content = inline["choices"][0]["message"]["content"]
    assert content.startswith("<think>") and "</think>" in content


def test_usage_estimated_when_upstream_gives_none(rhttp: httpx.Client) -> None:
    usage = ok(rhttp, chat("Hello there", model="nousage-model"))["usage"]
    assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0


def test_upstream_answering_json_instead_of_sse(rhttp: httpx.Client) -> None:
    assert (
        ok(rhttp, chat("Hi", model="json-model"))["choices"][0]["message"]["content"]
        == "Whole answer."
    )
    assert streamed_text(stream(rhttp, chat("Hi", model="json-model"))) == "Whole answer."


def test_vision_override_refuses_images(rhttp: httpx.Client) -> None:
    body = chat(
        [
            {
                "role": "user",
                "content": [
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}}
                ],
            }
        ],
        model="text-only-up",
    )
    response = rhttp.post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    assert check_error(response.json())["code"] == "image_not_supported"


def test_client_disconnect_cancels_the_upstream_request(
    relay: Server, upstream: FakeUpstream
) -> None:
    host, port = relay.url.removeprefix("http://").split(":")
    payload = json.dumps(chat("Hi", model="long-model", stream=True)).encode()
    with socket.create_connection((host, int(port))) as sock:
        sock.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
            + f"Authorization: Bearer {relay.admin_key}\r\n".encode()
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        received = b""
        while b"Hello" not in received:
            received += sock.recv(65536)
    # The upstream is still dripping (a chunk every 0.2 s); its next writes must fail.
    wait_for(lambda: "drip:0.2" in upstream.aborted, timeout=3)


# -- failover ------------------------------------------------------------------------------


@pytest.mark.parametrize("fault", FAULTS)
def test_failover_to_the_next_channel(rhttp: httpx.Client, fault: str) -> None:
    model = f"fo-{fault}"
    assert (
        ok(rhttp, chat("Hi", model=model))["choices"][0]["message"]["content"]
        == f"Hello from {model}."
    )
    assert streamed_text(stream(rhttp, chat("Hi", model=model))) == f"Hello from {model}."


def test_retry_after_keeps_a_rate_limited_channel_out(
    rhttp: httpx.Client, upstream: FakeUpstream
) -> None:
    before = len(upstream.bodies("429"))
    for _ in range(3):
        ok(rhttp, chat("Hi", model="fo-429"))
    assert len(upstream.bodies("429")) - before <= 1


def test_circuit_opens_and_is_probed_back(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    def bad_hits() -> int:
        return len(upstream.bodies("500:breaker"))

    def send(times: int = 1) -> None:
        for _ in range(times):
            ok(rhttp, chat("Hi", model="breaker-model"))

    send(2)  # two failures in a row (circuit_failures = 2): the circuit opens for 1 s
    assert bad_hits() == 2
    send(3)
    assert bad_hits() == 2  # open: the failing channel is skipped
    time.sleep(1.1)
    send(2)
    assert bad_hits() == 3  # half-open: exactly one probe; it failed, so open for 2 s
    time.sleep(1.1)
    send(2)
    assert bad_hits() == 3  # the doubled cooldown still holds
    time.sleep(1.0)
    send(1)
    assert bad_hits() == 4  # probed again after 2 s


def test_client_errors_are_not_retried(rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    good_before = len([b for b in upstream.bodies("ok") if b.get("model") == "fo-400"])
    response = rhttp.post("/v1/chat/completions", json=chat("Hi", model="fo-400"))
    assert response.status_code == 400
    assert "upstream says 400" in check_error(response.json())["message"]
    assert len([b for b in upstream.bodies("ok") if b.get("model") == "fo-400"]) == good_before


def test_stream_cut_after_bytes_ends_with_an_error_event(rhttp: httpx.Client) -> None:
    started = time.monotonic()
    events = stream(rhttp, chat("Hi", model="cut-model"))
    assert streamed_text(events) == "Partial"
    assert "error" in events[-1] and events[-1]["error"]["type"] == "upstream_error"
    assert time.monotonic() - started < 10
    # Nothing reached a non-streaming client yet, so that one fails over.
    assert (
        ok(rhttp, chat("Hi", model="cut-model"))["choices"][0]["message"]["content"]
        == "Hello from cut-model."
    )


@pytest.mark.parametrize(
    ("model", "words"),
    [("late-model", "malformed"), ("drip-model", "stalled"), ("event-model", "overloaded")],
)
def test_mid_stream_faults_become_error_events(rhttp: httpx.Client, model: str, words: str) -> None:
    events = stream(rhttp, chat("Hi", model=model))
    assert "error" in events[-1], events[-1]
    assert words in events[-1]["error"]["message"]


def test_every_channel_failing_says_why(rhttp: httpx.Client) -> None:
    response = rhttp.post("/v1/chat/completions", json=chat("Hi", model="doomed"))
    assert response.status_code == 502
    message = check_error(response.json())["message"]
    assert "doom-500" in message and "doom-hang" in message
    busy = rhttp.post("/v1/chat/completions", json=chat("Hi", model="busy"))
    assert busy.status_code == 503 and int(busy.headers["retry-after"]) >= 1
    slow = rhttp.post("/v1/chat/completions", json=chat("Hi", model="slow"))
    assert slow.status_code == 504
    assert check_error(slow.json())["type"] == "timeout"


# -- the CLI and live pickup ---------------------------------------------------------------


def test_channels_cli_and_live_pickup(
    relay: Server, rhttp: httpx.Client, upstream: FakeUpstream
) -> None:
    def listed() -> set[str]:
        return {m["id"] for m in rhttp.get("/v1/models").json()["data"]}

    added = relay.cli(
        "channels",
        "add",
        "live",
        "--base-url",
        upstream.url,
        "--key",
        "ok:live",
        "--key",
        "ok:live2",
        "--models",
        "live-model,live-2",
        "--map",
        "live-2=upstream-live",
        "--priority",
        "3",
        "--weight",
        "2",
    )
    assert added.returncode == 0, added.stderr
    wait_for(lambda: "live-model" in listed(), timeout=5)
    assert ok(rhttp, chat("Hi", model="live-2"))["model"] == "live-2"
    assert upstream.bodies("ok:live")[-1]["model"] == "upstream-live"

    listing = relay.cli("channels", "list")
    assert "live" in listing.stdout and "ok:live" not in listing.stdout
    tested = relay.cli("channels", "test", "live")
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "OK" in tested.stdout and "first chunk" in tested.stdout
    failing = relay.cli("channels", "test", "doom-500")
    assert failing.returncode == 1 and "FAILED" in failing.stdout

    assert relay.cli("channels", "disable", "live").returncode == 0
    wait_for(lambda: "live-model" not in listed(), timeout=5)
    assert relay.cli("channels", "enable", "live").returncode == 0
    wait_for(lambda: "live-model" in listed(), timeout=5)
    assert relay.cli("channels", "remove", "live").returncode == 0
    wait_for(lambda: "live-model" not in listed(), timeout=5)
    assert relay.cli("channels", "remove", "up-ok").returncode == 1  # from the config file


# -- the admin API -------------------------------------------------------------------------


def test_admin_channels_api(relay: Server, rhttp: httpx.Client, upstream: FakeUpstream) -> None:
    def models() -> set[str]:
        return {m["id"] for m in rhttp.get("/v1/models").json()["data"]}

    user_key = relay.create_key("not-admin")
    denied = httpx.get(
        relay.url + "/admin/channels", headers={"Authorization": f"Bearer {user_key}"}
    )
    assert denied.status_code == 403
    assert check_error(denied.json())["type"] == "permission_error"

    spec = {
        "name": "api-made",
        "base_url": upstream.url,
        "keys": ["ok:api", "ok:api2"],
        "models": ["api-model"],
        "priority": 2,
    }
    created = rhttp.post("/admin/channels", json=spec)
    assert created.status_code == 201, created.text
    assert created.json()["keys"] == 2 and "ok:api" not in created.text
    assert "api-model" in models()  # effective at once on this server
    assert (
        ok(rhttp, chat("Hi", model="api-model"))["choices"][0]["message"]["content"]
        == "Hello from api-model."
    )

    assert rhttp.post("/admin/channels", json=spec).status_code == 409
    bad = rhttp.post("/admin/channels", json={"name": "x", "models": ["m"]})
    assert bad.status_code == 400 and check_error(bad.json())["param"] == "base_url"

    listing = rhttp.get("/admin/channels").json()["data"]
    assert {c["name"]: c["source"] for c in listing}["api-made"] == "db"
    assert all(isinstance(c["keys"], int) for c in listing)
    assert "ok:api" not in rhttp.get("/admin/channels").text

    tested = rhttp.post("/admin/channels/api-made/test").json()
    assert tested["ok"] is True and tested["first_chunk_ms"] >= 0
    assert tested["answer"] == "Hello from api-model."
    assert rhttp.post("/admin/channels/doom-500/test").json()["ok"] is False

    patched = rhttp.patch("/admin/channels/api-made", json={"enabled": False})
    assert patched.status_code == 200 and patched.json()["enabled"] is False
    assert "api-model" not in models()
    assert rhttp.patch("/admin/channels/up-ok", json={"enabled": False}).status_code == 409
    assert rhttp.delete("/admin/channels/api-made").status_code == 204
    assert rhttp.get("/admin/channels/api-made").status_code == 404
