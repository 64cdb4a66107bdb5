"""Disconnects stop generation; concurrent requests all complete; the loop is never blocked."""

from __future__ import annotations

import json
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import openai

from tests.conftest import MODEL, Server, chat
from tests.schemas import check_completion


def engine_tokens(server: Server) -> int:
    stats = httpx.get(server.url + "/readyz").json()["engine"][MODEL]
    return int(stats["tokens_generated"])


def wait_until_stable(server: Server, settle: float = 0.6, limit: float = 15) -> int:
    deadline = time.monotonic() + limit
    last = engine_tokens(server)
    while time.monotonic() < deadline:
        time.sleep(settle)
        now = engine_tokens(server)
        if now == last:
            return now
        last = now
    raise AssertionError("the engine kept generating")


def _raw_stream_request(server: Server, body: dict[str, Any]) -> socket.socket:
    host, port = server.url.removeprefix("http://").split(":")
    sock = socket.create_connection((host, int(port)))
    payload = json.dumps(body).encode()
    sock.sendall(
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {server.admin_key}\r\n".encode()
        + b"Content-Type: application/json\r\n"
        + f"Content-Length: {len(payload)}\r\n\r\n".encode()
        + payload
    )
    return sock


def test_client_disconnect_stops_streaming_generation(server: Server) -> None:
    start = wait_until_stable(server)
    sock = _raw_stream_request(
        server, chat("Tell me a very long story.", max_tokens=1500, stream=True, temperature=0.8)
    )
    received = b""
    while received.count(b"data: ") < 6:
        received += sock.recv(65536)
    sock.close()
    stopped = wait_until_stable(server)
    # Six events arrived (role + five tokens); allow a few tokens in flight, not 1500.
    assert stopped - start < 20, stopped - start


def test_client_disconnect_stops_non_streaming_generation(server: Server) -> None:
    start = wait_until_stable(server)
    sock = _raw_stream_request(
        server, chat("Tell me a very long story.", max_tokens=1500, temperature=0.8)
    )
    deadline = time.monotonic() + 30
    while engine_tokens(server) - start < 5 and time.monotonic() < deadline:
        time.sleep(0.05)
    sock.close()
    stopped = wait_until_stable(server)
    assert stopped - start < 200, stopped - start


def test_concurrent_requests_all_complete(server: Server) -> None:
    client = openai.OpenAI(base_url=server.url + "/v1", api_key=server.admin_key, max_retries=0)

    def one(i: int) -> tuple[int, str]:
        completion = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": f"Say the number {i}."}],
            max_tokens=6,
            seed=i,
        )
        check_completion(completion.model_dump(exclude_unset=True))
        return completion.usage.completion_tokens if completion.usage else 0, completion.choices[
            0
        ].finish_reason

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(24)))
    assert len(results) == 24
    assert all(tokens > 0 for tokens, _ in results)


def test_health_answers_while_the_model_is_busy(server: Server) -> None:
    done = threading.Event()

    def long_generation() -> None:
        httpx.post(
            server.url + "/v1/chat/completions",
            json=chat("Tell me a long story.", max_tokens=400, temperature=0.8),
            headers={"Authorization": f"Bearer {server.admin_key}"},
            timeout=120,
        )
        done.set()

    worker = threading.Thread(target=long_generation)
    start = engine_tokens(server)
    worker.start()
    while engine_tokens(server) == start:
        time.sleep(0.02)
    answers = 0
    while not done.is_set() and answers < 5:
        assert httpx.get(server.url + "/healthz", timeout=5).status_code == 200
        answers += 1
    assert answers == 5 and not done.is_set(), "health checks should answer mid-generation"
    worker.join()


def test_stream_error_after_start_is_an_sse_error(http: httpx.Client) -> None:
    # A request that fails before the first chunk is a plain HTTP error, not a broken stream.
    response = http.post("/v1/chat/completions", json=chat("x " * 2100, max_tokens=5, stream=True))
    assert response.status_code == 400
    assert response.headers["content-type"].startswith("application/json")
