"""``/metrics``, request ids in every log line, and the access line, against a real server."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Server, chat, sse_events, start_server, stop_server
from tests.upstream import FakeUpstream, wait_for

ROUTE = "/v1/chat/completions"
FAST = {"first_byte_timeout": 0.5, "idle_timeout": 0.5, "connect_timeout": 0.5}
# What the fake upstream reports for every answer (tests/upstream.py _usage).
UPSTREAM_USAGE = {"prompt": 11, "completion": 7, "cached": 3, "reasoning": 2}
BUCKETS_LE = [
    *("0.001", "0.0025", "0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5"),
    *("1.0", "2.5", "5.0", "10.0", "30.0", "60.0", "120.0", "+Inf"),
]

Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def channel(name: str, up: FakeUpstream, key: str, model: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "base_url": up.url, "keys": [key], "models": [model], **extra}


@pytest.fixture(scope="module")
def upstream() -> FakeUpstream:
    return FakeUpstream().start()


@pytest.fixture(scope="module")
def obs(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Server]:
    config = {
        "access_log": True,
        "metrics_require_admin": True,
        "circuit_failures": 2,
        "circuit_cooldown_seconds": 30,
        "channels": [
            channel("obs-ok", upstream, "ok", "obs-model"),
            channel("obs-bad", upstream, "500", "obs-failover", priority=1, **FAST),
            channel("obs-good", upstream, "ok", "obs-failover"),
            channel("obs-busy", upstream, "429", "obs-busy"),
            channel("obs-hang", upstream, "hang", "obs-slow", **FAST),
            channel("obs-refuses", upstream, "400", "obs-400"),
        ],
    }
    srv = start_server(tmp_path_factory.mktemp("obs"), extra_config=config)
    yield srv
    stop_server(srv)


@pytest.fixture(scope="module")
def ohttp(obs: Server) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=obs.url, timeout=60, headers={"Authorization": f"Bearer {obs.admin_key}"}
    ) as c:
        yield c


def scrape(client: httpx.Client) -> Samples:
    response = client.get("/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(response.text)
        for s in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


def server_lines(server: Server, request_id: str, until: str, timeout: float = 10) -> list[Any]:
    """The server's JSON log lines carrying ``request_id``, once one with logger ``until`` is
    there (the access line comes after the response)."""
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in _json_lines(server) if e.get("request_id") == request_id]
        if any(e["logger"] == until for e in found) or time.monotonic() > deadline:
            return found
        time.sleep(0.05)


def _json_lines(server: Server) -> list[dict[str, Any]]:
    entries = []
    for line in list(server.output):
        if line.startswith("{"):
            entries.append(json.loads(line))
    return entries


def test_metrics_need_an_admin_key_when_configured(obs: Server, ohttp: httpx.Client) -> None:
    assert httpx.get(obs.url + "/metrics").status_code == 401
    user_key = obs.create_key("obs-user")
    denied = httpx.get(obs.url + "/metrics", headers={"Authorization": f"Bearer {user_key}"})
    assert denied.status_code == 403
    assert denied.json()["error"]["code"] == "admin_required"
    assert "llmrelay_requests_total" in ohttp.get("/metrics").text


def test_metrics_are_open_by_default(server: Server) -> None:
    response = httpx.get(server.url + "/metrics")
    assert response.status_code == 200
    names = {f.name for f in text_string_to_metric_families(response.text)}
    assert {"llmrelay_requests", "llmrelay_request_duration_seconds"} <= names
    assert {"llmrelay_requests_in_flight", "llmrelay_engine_queue_depth"} <= names


def test_requests_latency_ttft_and_tokens(ohttp: httpx.Client) -> None:
    before = scrape(ohttp)
    assert ohttp.post(ROUTE, json=chat("Hi", model="obs-model")).status_code == 200
    with ohttp.stream("POST", ROUTE, json=chat("Hi", model="obs-model", stream=True)) as r:
        assert r.status_code == 200
        sse_events(r)
    no_model = {"messages": [{"role": "user", "content": "Hi"}]}
    by_path = ohttp.post("/obs-model/v1/chat/completions", json=no_model)
    assert by_path.status_code == 200
    assert ohttp.post(ROUTE, json=chat("Hi", model="no-such-model")).status_code == 404
    assert ohttp.post(ROUTE, json=chat("Hi", model="obs-model", top_p=7)).status_code == 400
    after = scrape(ohttp)

    ok = {"route": ROUTE, "model": "obs-model"}
    assert moved(before, after, "llmrelay_requests_total", **ok, status="200") == 2
    path_route = {"route": "/{model:path}/v1/chat/completions", "model": "obs-model"}
    assert moved(before, after, "llmrelay_requests_total", **path_route, status="200") == 1
    # An unknown model's name stays out of the labels; a refused request names no model yet.
    assert moved(before, after, "llmrelay_requests_total", route=ROUTE, model="", status="404")
    assert moved(before, after, "llmrelay_requests_total", route=ROUTE, model="", status="400")
    assert all(dict(labels).get("model") != "no-such-model" for _, labels in after)

    latency = "llmrelay_request_duration_seconds"
    assert moved(before, after, latency + "_count", **ok) == 2
    assert moved(before, after, latency + "_bucket", **ok, le="+Inf") == 2
    assert 0 < moved(before, after, latency + "_sum", **ok) < 10
    bounds = [k[1] for k in after if k[0] == latency + "_bucket" and ok.items() <= k[1]]
    assert len(bounds) == 17  # 1 ms … 120 s, and +Inf
    cumulative = [value(after, latency + "_bucket", **ok, le=le) for le in BUCKETS_LE]
    assert cumulative == sorted(cumulative)
    assert cumulative[-1] == value(after, latency + "_count", **ok)

    ttft = "llmrelay_time_to_first_token_seconds"
    assert moved(before, after, ttft + "_count", model="obs-model") == 1
    assert moved(before, after, ttft + "_bucket", model="obs-model", le="+Inf") == 1

    for kind, count in UPSTREAM_USAGE.items():
        tokens = moved(before, after, "llmrelay_tokens_total", model="obs-model", kind=kind)
        assert tokens == 3 * count, kind
    attempts = "llmrelay_upstream_attempts_total"
    assert moved(before, after, attempts, channel="obs-ok", outcome="ok") == 3
    assert value(after, "llmrelay_requests_in_flight") == 1  # the scrape itself


def test_upstream_attempts_by_outcome_and_circuit_state(ohttp: httpx.Client) -> None:
    before = scrape(ohttp)
    assert ohttp.post(ROUTE, json=chat("Hi", model="obs-failover")).status_code == 200
    assert ohttp.post(ROUTE, json=chat("Hi", model="obs-busy")).status_code == 503
    assert ohttp.post(ROUTE, json=chat("Hi", model="obs-slow")).status_code == 504
    assert ohttp.post(ROUTE, json=chat("Hi", model="obs-400")).status_code == 400
    after = scrape(ohttp)

    attempts = "llmrelay_upstream_attempts_total"
    assert moved(before, after, attempts, channel="obs-bad", outcome="failed") == 1
    assert moved(before, after, attempts, channel="obs-good", outcome="ok") == 1
    assert moved(before, after, attempts, channel="obs-busy", outcome="rate_limited") == 1
    assert moved(before, after, attempts, channel="obs-hang", outcome="timeout") == 1
    assert moved(before, after, attempts, channel="obs-refuses", outcome="rejected") == 1
    # A failure of a model that exists keeps its model label.
    busy = {"route": ROUTE, "model": "obs-busy", "status": "503"}
    assert moved(before, after, "llmrelay_requests_total", **busy) == 1
    # The 429 came with Retry-After: 30, which opens the circuit at once.
    assert value(after, "llmrelay_circuit_state", channel="obs-busy") == 2
    assert value(after, "llmrelay_circuit_state", channel="obs-ok") == 0


def test_every_log_line_of_a_request_carries_its_id(obs: Server, ohttp: httpx.Client) -> None:
    response = ohttp.post(
        ROUTE, json=chat("Hi", model="obs-failover"), headers={"x-request-id": "obs-trace-1"}
    )
    assert response.status_code == 200
    assert response.headers["x-request-id"] == "obs-trace-1"
    lines = server_lines(obs, "obs-trace-1", until="llmrelay.access")
    warnings = [e for e in lines if e["level"] == "warning" and "obs-bad failed" in e["message"]]
    assert len(warnings) == 1, lines
    access = [e for e in lines if e["logger"] == "llmrelay.access"]
    assert len(access) == 1, lines
    line = access[0]
    assert line["method"] == "POST" and line["path"] == ROUTE and line["status"] == 200
    assert line["model"] == "obs-failover" and line["latency_ms"] > 0
    # No line about this request's failure is missing the id.
    about = [e for e in _json_lines(obs) if "obs-bad failed" in e["message"]]
    assert all(e.get("request_id") for e in about), about


def test_request_ids_are_echoed_or_made(obs: Server) -> None:
    sent = httpx.get(obs.url + "/v1/models", headers={"x-request-id": "client-id-42"})
    assert sent.status_code == 401  # no key: errors carry the id too
    assert sent.headers["x-request-id"] == "client-id-42"
    made = httpx.get(obs.url + "/healthz").headers["x-request-id"]
    assert made.startswith("req_") and len(made) > 8
    lines = server_lines(obs, made, until="llmrelay.access")
    assert [e["path"] for e in lines if e["logger"] == "llmrelay.access"] == ["/healthz"]
    assert "model" not in lines[-1]


def test_ledger_writes_are_counted(ohttp: httpx.Client) -> None:
    queued = ("llmrelay_ledger_queued_rows", frozenset())
    # Rows of earlier requests may still be on their way to the database: let them land.
    wait_for(lambda: scrape(ohttp)[queued] == 0)
    before = scrape(ohttp)
    for _ in range(3):
        assert ohttp.post(ROUTE, json=chat("Hi", model="obs-model")).status_code == 200
    ledger = "llmrelay_ledger_total"
    # Each answer's row is journaled before the answer is sent and committed soon after.
    wait_for(lambda: scrape(ohttp)[queued] == 0)
    after = scrape(ohttp)
    assert moved(before, after, ledger, what="rows") == 3
    assert 1 <= moved(before, after, ledger, what="transactions") <= 3
    assert moved(before, after, ledger, what="failed_rows") == 0
