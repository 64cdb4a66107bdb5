"""Billing in the request path: reservations, rate limits and the ledger, against real servers.

Credits and balances are never overspent by concurrent requests (one process on SQLite; two
processes sharing PostgreSQL and Redis), RPM/TPM hold within one request, the ledger's token
counts are the usage the client saw, a stream the client cut is charged for what was
generated, and a response a client received completely is in the ledger even when the server
is killed with SIGKILL right after.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
from openai.types.chat import ChatCompletion

from tests.billing import (
    ANSWER_PUSD,
    BODY,
    billing_config,
    fire,
    flush,
    hammer,
    ledger,
    limiter_counts,
    spent,
    start_billing,
    statuses,
)
from tests.conftest import Server, start_server, stop_server
from tests.databases import fresh_postgres
from tests.schemas import check_error
from tests.upstream import FakeUpstream, wait_for


@pytest.fixture(scope="module")
def upstream() -> FakeUpstream:
    return FakeUpstream().start()


@pytest.fixture(scope="module")
def billing(tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream) -> Iterator[Server]:
    server = start_billing(tmp_path_factory.mktemp("billing"), upstream)
    yield server
    stop_server(server)


def _quota_refusals(responses: list[httpx.Response]) -> None:
    for r in responses:
        if r.status_code == 429:
            body = r.json()
            check_error(body)
            assert body["error"]["code"] == "insufficient_quota", body
            assert body["error"]["type"] == "insufficient_quota"


def test_a_credit_admits_exactly_what_it_covers(billing: Server) -> None:
    key = billing.create_key("k-credit", "--credit", "0.00007")  # 10 answers
    responses = fire([billing.url], [key], 200)
    assert statuses(responses) == {200: 10, 429: 190}
    _quota_refusals(responses)
    charged = [r for r in ledger(billing, "k-credit") if r["status"] == 200]
    assert len(charged) == 10
    assert sum(r["cost_pusd"] for r in charged) == 10 * ANSWER_PUSD
    assert spent(billing, "api_keys", "k-credit") == (10 * ANSWER_PUSD, 10 * ANSWER_PUSD)
    # Spent is spent: the next request is refused too.
    again = httpx.post(
        billing.url + "/v1/chat/completions", json=BODY, headers={"Authorization": f"Bearer {key}"}
    )
    assert again.status_code == 429


def test_a_user_balance_is_shared_by_its_keys(billing: Server) -> None:
    created = billing.cli("users", "create", "u-bal", "--balance", "0.00007")
    assert created.returncode == 0, created.stderr
    keys = [billing.create_key(f"k-bal-{i}", "--user", "u-bal") for i in range(3)]
    responses = fire([billing.url], keys, 200)
    assert statuses(responses) == {200: 10, 429: 190}
    _quota_refusals(responses)
    assert spent(billing, "users", "u-bal") == (0, 10 * ANSWER_PUSD)


def test_requests_per_minute(billing: Server) -> None:
    key = billing.create_key("k-rpm", "--rpm", "5")
    responses = fire([billing.url], [key], 20)
    assert statuses(responses) == {200: 5, 429: 15}
    ok = next(r for r in responses if r.status_code == 200)
    assert ok.headers["x-ratelimit-limit-requests"] == "5"
    refused = next(r for r in responses if r.status_code == 429)
    check_error(refused.json())
    assert refused.json()["error"]["code"] == "rate_limit_exceeded"
    assert int(refused.headers["retry-after"]) >= 1
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"


RATE_HEADERS = [
    f"x-ratelimit-{what}-{unit}"
    for unit in ("requests", "tokens")
    for what in ("limit", "remaining", "reset")
]
RESET = re.compile(r"\d+ms|(\d+m)?\d+(\.\d+)?s")


def _rate_headers_on_one_connection(server: Server, name: str) -> None:
    """Each answer of a metered key, JSON or streamed, carries each x-ratelimit-* header once,
    with the key's state after it; answers that follow one another on one connection stay
    intact (a head spliced wrongly would break the next one's framing)."""
    key = server.create_key(name, "--rpm", "6", "--tpm", "100000")
    remaining = []
    with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {key}"}) as http:
        for stream in (False, True, False, True):
            response = http.post("/v1/chat/completions", json={**BODY, "stream": stream})
            assert response.status_code == 200, response.text
            if stream:
                assert response.text.endswith("data: [DONE]\n\n")
            else:
                ChatCompletion.model_validate(response.json())
            for header in RATE_HEADERS:
                assert len(response.headers.get_list(header)) == 1, header
            assert response.headers["x-ratelimit-limit-requests"] == "6"
            assert response.headers["x-ratelimit-limit-tokens"] == "100000"
            for unit in ("requests", "tokens"):
                assert RESET.fullmatch(response.headers[f"x-ratelimit-reset-{unit}"])
            assert int(response.headers["x-ratelimit-remaining-tokens"]) < 100000
            remaining.append(int(response.headers["x-ratelimit-remaining-requests"]))
    assert remaining == [5, 4, 3, 2]


def test_rate_limit_headers_on_every_answer(billing: Server) -> None:
    _rate_headers_on_one_connection(billing, "k-headers")


def test_rate_limit_headers_with_the_h11_parser(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> None:
    """The h11 protocol offers no way to write header lines into a head: the headers go
    through uvicorn's checks like any other."""
    server = start_billing(
        tmp_path_factory.mktemp("h11"), upstream, http_parser="h11", local_models=[]
    )
    try:
        _rate_headers_on_one_connection(server, "k-h11")
    finally:
        stop_server(server)


def test_tokens_per_minute_within_one_request(billing: Server) -> None:
    # Each answer uses 18 tokens; 100 a minute allows 5 when counted exactly. Admission counts
    # an upper bound first and corrects it once the usage is known: 4 or 5 get through.
    key = billing.create_key("k-tpm", "--tpm", "100")
    headers = {"Authorization": f"Bearer {key}"}
    passed = 0
    for _ in range(8):
        r = httpx.post(billing.url + "/v1/chat/completions", json=BODY, headers=headers)
        if r.status_code != 200:
            assert r.status_code == 429 and r.json()["error"]["code"] == "rate_limit_exceeded"
            break
        passed += 1
    assert passed in (4, 5)


@pytest.mark.parametrize("mode", ["json", "stream", "stream+usage"])
def test_the_ledger_has_the_usage_the_client_saw(billing: Server, mode: str) -> None:
    request_id = f"req-usage-{mode}"
    body = {**BODY, "stream": mode != "json"}
    if mode == "stream+usage":
        body["stream_options"] = {"include_usage": True}
    headers = {"Authorization": f"Bearer {billing.admin_key}", "x-request-id": request_id}
    seen = None
    with httpx.stream(
        "POST", billing.url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        assert response.status_code == 200
        if mode == "json":
            seen = json.loads(response.read())["usage"]
        else:
            for line in response.iter_lines():
                if line.startswith("data: {") and '"usage":{' in line:
                    seen = json.loads(line[6:])["usage"]
    row = next(r for r in ledger(billing) if r["request_id"] == request_id)
    expected = seen or {"prompt_tokens": 11, "completion_tokens": 7}  # what the upstream used
    assert row["prompt_tokens"] == expected["prompt_tokens"] == 11
    assert row["completion_tokens"] == expected["completion_tokens"] == 7
    assert (row["cached_tokens"], row["reasoning_tokens"]) == (3, 2)
    assert row["cost_pusd"] == ANSWER_PUSD and not row["estimated"]
    assert row["stream"] == (mode != "json") and row["channel"] == "bill"
    assert mode != "stream+usage" or seen is not None


def test_a_cut_stream_is_charged_for_what_was_generated(billing: Server) -> None:
    request_id = "req-cut"
    body = {"model": "dripped", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    headers = {"Authorization": f"Bearer {billing.admin_key}", "x-request-id": request_id}
    with httpx.stream(
        "POST", billing.url + "/v1/chat/completions", json=body, headers=headers
    ) as response:
        for line in response.iter_lines():
            if '"content":"Hello"' in line:
                break  # and hang up
    wait_for(lambda: any(r["request_id"] == request_id for r in ledger(billing)))
    row = next(r for r in ledger(billing) if r["request_id"] == request_id)
    assert (row["status"], row["error_type"]) == (499, "client_disconnected")
    assert row["estimated"] and row["completion_tokens"] >= 1 and row["prompt_tokens"] >= 1
    assert row["cost_pusd"] == row["completion_tokens"] * 1_000_000


def test_a_failed_request_is_recorded_and_not_charged(billing: Server) -> None:
    key = billing.create_key("k-fail", "--credit", "0.00007")
    body = {**BODY, "model": "no-such-model"}
    r = httpx.post(
        billing.url + "/v1/chat/completions", json=body, headers={"Authorization": f"Bearer {key}"}
    )
    assert r.status_code == 404
    wait_for(lambda: len(ledger(billing, "k-fail")) == 1)
    row = ledger(billing, "k-fail")[0]
    assert (row["status"], row["cost_pusd"]) == (404, 0)
    # The reservation was released: the whole credit is still there.
    responses = fire([billing.url], [key], 12)
    assert statuses(responses) == {200: 10, 429: 2}


def test_two_processes_share_postgres_and_redis(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> None:
    with fresh_postgres() as url:
        extra = {"database_url": url, "redis_url": "redis://127.0.0.1:6379/0"}
        first = start_billing(tmp_path_factory.mktemp("pg-a"), upstream, **extra)
        config = (first.data_dir.parent / "config.yaml").read_text()
        second_dir = tmp_path_factory.mktemp("pg-b")
        try:
            # Same database, same Redis namespace: a second process of one deployment.
            second = start_billing(
                second_dir,
                upstream,
                **{**extra, "redis_prefix": json.loads(config)["redis_prefix"]},
            )
            try:
                # The admin key is in the shared database; only the first start printed it.
                _shared_limits(first, dataclasses.replace(second, admin_key=first.admin_key))
            finally:
                stop_server(second)
        finally:
            stop_server(first)


def _shared_limits(first: Server, second: Server) -> None:
    urls = [first.url, second.url]
    key = first.create_key("k-shared", "--credit", "0.00007")
    responses = fire(urls, [key], 200)
    assert statuses(responses) == {200: 10, 429: 190}
    flush(second)
    assert spent(first, "api_keys", "k-shared") == (10 * ANSWER_PUSD, 10 * ANSWER_PUSD)
    created = first.cli("users", "create", "u-shared", "--balance", "0.00007")
    assert created.returncode == 0, created.stderr
    keys = [first.create_key(f"k-us-{i}", "--user", "u-shared") for i in range(3)]
    assert statuses(fire(urls, keys, 200)) == {200: 10, 429: 190}
    flush(second)
    assert spent(first, "users", "u-shared") == (0, 10 * ANSWER_PUSD)
    rpm = first.create_key("k-shared-rpm", "--rpm", "6")
    assert statuses(fire(urls, [rpm], 30)) == {200: 6, 429: 24}
    # 18 tokens an answer, 33 counted up front: 3 to 5 of 100 a minute, never more.
    tpm = first.create_key("k-shared-tpm", "--tpm", "100")
    passed = statuses(fire(urls, [tpm], 12)).get(200, 0)
    assert 3 <= passed <= 5
    _leases_under_load(first, second)


def _leases_under_load(first: Server, second: Server) -> None:
    """A busy key far from its limit is served from leases (no round trip to Redis per
    request), and they never admit more than the credit covers: once the leases of the idle
    key are given back, exactly what it covers has been admitted, and charged."""
    urls = [first.url, second.url]
    key = first.create_key("k-busy", "--credit", "0.0021")  # 300 answers
    before = [limiter_counts(server) for server in (first, second)]
    admitted = hammer(urls, key)
    assert admitted <= 300
    leased = [
        limiter_counts(server)["leased"] - counts["leased"]
        for server, counts in zip((first, second), before, strict=True)
    ]
    assert all(n > 0 for n in leased), leased
    time.sleep(0.3)  # idle: the leases give back what they hold
    while found := statuses(fire(urls, [key], 16)).get(200, 0):
        admitted += found
    assert admitted == 300
    flush(second)
    assert spent(first, "api_keys", "k-busy") == (300 * ANSWER_PUSD, 300 * ANSWER_PUSD)


def test_a_received_answer_survives_kill_9(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> None:
    """Every answer a client received has its ledger row once the server is back: rows not
    committed yet when it died are in its journal, which the next start writes."""
    tmp = tmp_path_factory.mktemp("crash")
    server = start_billing(tmp, upstream)
    received: list[str] = []
    stop = threading.Event()

    def client(worker: int) -> None:
        with httpx.Client(timeout=10) as http:
            for n in range(100_000):
                if stop.is_set():
                    return
                request_id = f"crash-{worker}-{n}"
                headers = {
                    "Authorization": f"Bearer {server.admin_key}",
                    "x-request-id": request_id,
                }
                try:
                    r = http.post(server.url + "/v1/chat/completions", json=BODY, headers=headers)
                except httpx.HTTPError:
                    return
                if r.status_code == 200 and r.json()["usage"]["completion_tokens"] == 7:
                    received.append(request_id)

    threads = [threading.Thread(target=client, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    wait_for(lambda: len(received) >= 200, timeout=60)
    os.kill(server.process.pid, signal.SIGKILL)
    stop.set()
    for t in threads:
        t.join()
    server.process.wait()
    restarted = start_server(tmp, extra_config=billing_config(upstream))
    try:
        rows = ledger(restarted, flushed=True)  # written during the start, before it serves
    finally:
        stop_server(restarted)
    recorded = [r["request_id"] for r in rows]
    assert len(recorded) == len(set(recorded)), "a row was written twice"
    missing = [r for r in received if r not in set(recorded)]
    assert not missing, f"{len(missing)} of {len(received)} answered requests have no ledger row"


def test_admin_requests_are_recorded_without_limits(billing: Server) -> None:
    before = len(ledger(billing))
    responses = fire([billing.url], [billing.admin_key], 20)
    assert statuses(responses) == {200: 20}
    assert "x-ratelimit-limit-requests" not in responses[0].headers
    assert len(ledger(billing)) >= before + 20


def test_accounting_can_be_switched_off(
    tmp_path_factory: pytest.TempPathFactory, upstream: FakeUpstream
) -> None:
    server = start_billing(tmp_path_factory.mktemp("off"), upstream, accounting=False)
    try:
        key = server.create_key("k-off", "--credit", "0.00007")
        assert statuses(fire([server.url], [key], 15)) == {200: 15}
        time.sleep(0.2)
        assert ledger(server) == []
    finally:
        stop_server(server)
